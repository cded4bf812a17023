//! The controller's own tests of a host and its VMs: ICMP echo from a raw
//! socket (TCP connect where ICMP is not wanted), the host's storage
//! heartbeat file, and the out-of-band fence command.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::StorageHeartbeat;

use super::settings::HostProbe;

/// One ICMP socket for every probe; `None` when the system refuses one
/// (then every probe falls back to TCP port 22).
pub struct Prober {
    icmp: Option<surge_ping::Client>,
}

impl Prober {
    pub fn new() -> Prober {
        let config = surge_ping::Config::builder()
            .sock_type_hint(socket2::Type::RAW)
            .build();
        let icmp = match surge_ping::Client::new(&config) {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!("no ICMP socket ({e}); host probes use TCP port 22");
                None
            }
        };
        Prober { icmp }
    }

    /// True when `address` answers within `timeout`.
    pub async fn answers(&self, address: IpAddr, probe: HostProbe, timeout: Duration) -> bool {
        match (probe, &self.icmp) {
            (HostProbe::Icmp, Some(client)) => {
                let id = surge_ping::PingIdentifier(rand::random());
                let mut pinger = client.pinger(address, id).await;
                pinger.timeout(timeout);
                pinger
                    .ping(surge_ping::PingSequence(0), b"lifeboat")
                    .await
                    .is_ok()
            }
            (HostProbe::Tcp { port }, _) => {
                tcp_answers(SocketAddr::new(address, port), timeout).await
            }
            (HostProbe::Icmp, None) => tcp_answers(SocketAddr::new(address, 22), timeout).await,
        }
    }
}

/// A connection or a refusal both prove the address is alive.
async fn tcp_answers(target: SocketAddr, timeout: Duration) -> bool {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => false,
    }
}

/// Reads `<dir>/<host id>.json`; `None` if absent or unreadable (a torn or
/// hostile file is no sign of life).
pub fn read_storage_heartbeat(dir: &Path, host_id: &str) -> Option<StorageHeartbeat> {
    let bytes = std::fs::read(dir.join(format!("{host_id}.json"))).ok()?;
    if bytes.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice::<StorageHeartbeat>(&bytes)
        .ok()
        .filter(|beat| beat.host_id == host_id)
}

/// Why the out-of-band fence command did not report the host off.
#[derive(Debug, thiserror::Error)]
pub enum FenceCommandError {
    #[error("cannot run sh: {0}")]
    Run(#[source] lifeboat_os::command::CommandError),
    #[error("{status}: {stderr}")]
    Failed { status: String, stderr: String },
}

/// Runs the operator's fence command with `sh -c`; success is exit status 0
/// within `timeout`. Output is kept short for the host's history.
pub async fn run_fence_command(command: &str, timeout: Duration) -> Result<(), FenceCommandError> {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(command);
    let out = tokio::task::spawn_blocking(move || {
        lifeboat_os::command::run_bounded(sh, timeout, 64 * 1024)
    })
    .await
    .map_err(|e| FenceCommandError::Run(lifeboat_os::command::CommandError::Wait(e.into())))?
    .map_err(FenceCommandError::Run)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(FenceCommandError::Failed {
        status: out.status.to_string(),
        stderr: stderr.trim().chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_command_succeeds_only_with_status_zero() {
        run_fence_command("true", Duration::from_secs(5))
            .await
            .unwrap();
        let e = run_fence_command("echo no power >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, FenceCommandError::Failed { stderr, .. } if stderr == "no power"),
            "{e}"
        );
        let e = run_fence_command("sleep 5", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no answer within"), "{e}");
    }

    #[tokio::test]
    async fn tcp_refusal_counts_as_alive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(tcp_answers(addr, Duration::from_secs(1)).await);
        drop(listener);
        assert!(tcp_answers(addr, Duration::from_secs(1)).await);
    }

    #[test]
    fn a_storage_heartbeat_of_another_host_is_ignored() {
        let dir = std::env::temp_dir().join(format!("lifeboat-hb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let beat = StorageHeartbeat {
            host_id: "h2".into(),
            seq: 4,
            ..StorageHeartbeat::default()
        };
        std::fs::write(dir.join("h1.json"), serde_json::to_vec(&beat).unwrap()).unwrap();
        assert!(read_storage_heartbeat(&dir, "h1").is_none());
        std::fs::write(dir.join("h2.json"), serde_json::to_vec(&beat).unwrap()).unwrap();
        assert_eq!(read_storage_heartbeat(&dir, "h2").unwrap().seq, 4);
        std::fs::write(dir.join("h2.json"), b"{trunc").unwrap();
        assert!(read_storage_heartbeat(&dir, "h2").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// GET `url` and compare the status. An https certificate is not checked:
/// this only asks "is the service up", and sends nothing secret.
pub async fn http_status_is(url: &str, expected: u16, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, http_status(url))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
        .and_then(|status| {
            if status == expected {
                Ok(())
            } else {
                Err(format!("status {status}, expected {expected}"))
            }
        })
}

async fn http_status(url: &str) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or("no host in the URL")?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host_for_connect = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((host_for_connect.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::USER_AGENT, "lifeboat-health-check")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    if https {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host_for_connect).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
}

async fn send<S>(
    stream: S,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    driver.abort();
    Ok(response?.status().as_u16())
}

/// Accepts any server certificate: health checks only (see above).
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
