//! The host agent's parts; `main.rs` is the `lifeboat-agent` binary over
//! them. A library as well so the fuzz targets (`fuzz/`) reach the parsers
//! of untrusted input: NBD replies, virsh output and domain XML.

pub mod backup;
mod config_drive;
mod fence;
pub mod host_dirs;
pub mod hypervisor;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod nbd;
mod restore;
mod tls;

/// Entry points for the fuzz targets only: each feeds untrusted bytes to
/// one parser and must return (an error is fine), never panic or hang.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::hypervisor::libvirt::fuzz_parsers as virsh_output;
    pub use crate::nbd::fuzz_server_replies as nbd_replies;
}
