//! Data channels: a backup or restore job registers a one-time token; the
//! agent's second connection presenting it, from the host it was issued
//! for, is handed to that job. Bulk data never rides the control session.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::{Hub, DATA_CHANNEL_WAIT};
use crate::inventory::Host;

/// A job's data channel: any mutually authenticated agent connection.
pub trait DataIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> DataIo for T {}
pub type DataStream = Box<dyn DataIo>;

pub(super) struct DataWaiter {
    host_id: String,
    tx: oneshot::Sender<DataStream>,
}

impl Hub {
    /// Registers a data channel a job expects from `host_id`. Returns the
    /// token to give the agent and the receiver of the connection.
    /// The future resolves to the agent's connection, or to an error if the
    /// agent does not open it within [`DATA_CHANNEL_WAIT`].
    pub fn expect_data_channel(
        &self,
        host_id: &str,
    ) -> (
        String,
        impl std::future::Future<Output = Result<DataStream, String>> + Send + 'static,
    ) {
        let token = crate::access::random_token();
        let (tx, rx) = oneshot::channel();
        self.data_channels
            .lock()
            .expect("data channels lock")
            .insert(
                crate::access::token_hash(&token),
                DataWaiter {
                    host_id: host_id.to_string(),
                    tx,
                },
            );
        let channel = async move {
            tokio::time::timeout(DATA_CHANNEL_WAIT, rx)
                .await
                .map_err(|_| "the agent never opened its data channel".to_string())?
                .map_err(|_| "data channel wait cancelled".to_string())
        };
        (token, channel)
    }

    /// Forgets a data channel that is no longer awaited.
    pub fn forget_data_channel(&self, token: &str) {
        self.data_channels
            .lock()
            .expect("data channels lock")
            .remove(&crate::access::token_hash(token));
    }

    pub(super) async fn attach_data_channel(
        &self,
        mut stream: DataStream,
        addr: SocketAddr,
        host: &Host,
        token: &str,
    ) {
        let waiter = {
            let mut channels = self.data_channels.lock().expect("data channels lock");
            let key = crate::access::token_hash(token);
            match channels.get(&key) {
                // A token is bound to the host it was issued for.
                Some(w) if w.host_id == host.id => channels.remove(&key),
                _ => None,
            }
        };
        let Some(waiter) = waiter else {
            return Self::reject(&mut stream, addr, "unknown or foreign data channel token").await;
        };
        if let Err(mut stream) = waiter.tx.send(stream) {
            Self::reject(
                &mut stream,
                addr,
                "the job no longer waits for this data channel",
            )
            .await;
        }
    }
}
