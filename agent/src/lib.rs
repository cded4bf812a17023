//! The host agent's parts; `main.rs` is the `lifeboat-agent` binary over
//! them. A library as well so the fuzz targets (`fuzz/`) reach the parsers
//! of untrusted input: NBD replies, virsh output and domain XML.

pub mod backup;
mod config_drive;
mod fence;
pub mod host_dirs;
pub mod hypervisor;
pub mod identity;
mod instant;
pub mod link;
pub mod metrics;
pub mod nbd;
mod restore;
mod tls;

/// Runs CPU or disk work off the runtime; starts at once, not when awaited.
pub(crate) fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> impl std::future::Future<Output = anyhow::Result<T>> {
    let task = tokio::task::spawn_blocking(f);
    async move {
        use anyhow::Context;
        task.await.context("agent worker task panicked")?
    }
}

/// Entry points for the fuzz targets only: each feeds untrusted bytes to
/// one parser and must return (an error is fine), never panic or hang.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::hypervisor::libvirt::fuzz_parsers as virsh_output;
    pub use crate::nbd::fuzz_server_replies as nbd_replies;
}
