//! Hypervisor drivers: one per platform behind the [`Hypervisor`] trait.
//!
//! Drivers are blocking (they run the platform's own CLI tools); the link
//! calls them from `spawn_blocking` so the async runtime never waits on them.

use std::time::Duration;

use lifeboat_proto::{HostFacts, PowerAction, VmInfo};

pub mod libvirt;
pub mod sim;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("no VM with UUID {0} on this host")]
    UnknownVm(String),
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("cannot parse hypervisor output: {0}")]
    Parse(String),
    #[error("{0}")]
    Refused(String),
}

pub trait Hypervisor: Send + Sync {
    /// Short driver name reported to the controller (`libvirt`, `sim`, ...).
    fn driver(&self) -> &'static str;
    /// Host facts: hostname, hypervisor version, CPUs and memory.
    fn host_facts(&self) -> Result<HostFacts, HypervisorError>;
    /// Every VM defined on the host, running or not.
    fn inventory(&self) -> Result<Vec<VmInfo>, HypervisorError>;
    /// Runs one power action and returns once the hypervisor has done it.
    /// `shutdown` asks the guest (ACPI) and powers off after `timeout`.
    fn power(
        &self,
        uuid: &str,
        action: PowerAction,
        timeout: Duration,
    ) -> Result<(), HypervisorError>;
}
