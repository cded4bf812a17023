//! `lifeboat-agent`: runs on each virtualization host, reports its VMs to the
//! controller and carries out the controller's commands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use lifeboat_agent::{backup, host_dirs, hypervisor, identity, link};

#[derive(Parser)]
#[command(name = "lifeboat-agent", version, about = "Lifeboat host agent")]
struct Args {
    /// The controller's agent address, HOST:PORT.
    #[arg(long)]
    controller: String,
    /// One-time enrollment token (first start only).
    #[arg(
        long,
        env = "LIFEBOAT_ENROLLMENT_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<String>,
    /// Fingerprint of the controller's CA, sha256:HEX (first start only).
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// Where the agent keeps its identity.
    #[arg(long, default_value = "/var/lib/lifeboat-agent")]
    state_dir: PathBuf,
    /// Libvirt connection URI (default: virsh's own default).
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// Name of this host in the controller (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Hypervisor driver. `sim` is an in-memory simulated host for demos and
    /// load tests; it manages no real VM.
    #[arg(long, value_enum, default_value_t = Driver::Libvirt)]
    driver: Driver,
    /// Limit how fast backups read this host's disks, in MiB/s (0: no limit).
    #[arg(long, default_value_t = 0)]
    backup_read_limit_mib: u64,
    /// Number of VMs the `sim` driver makes up.
    #[arg(long, default_value_t = 100)]
    sim_vms: usize,
    /// A directory this host keeps VM disks in; repeat for several.
    /// Restores write disks only there. Default: libvirt's default pool.
    #[arg(long = "image-dir", value_name = "DIR", default_value = host_dirs::DEFAULT_IMAGE_DIR)]
    image_dirs: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Driver {
    Libvirt,
    Sim,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = backup::send::READ_LIMIT.set(args.backup_read_limit_mib * 1024 * 1024);
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    host_dirs::init(&args.image_dirs, &args.state_dir)
        .with_context(|| format!("cannot prepare {}/tmp", args.state_dir.display()))?;
    if !identity::is_enrolled(&args.state_dir) {
        let (Some(token), Some(fp)) = (&args.token, &args.ca_fingerprint) else {
            bail!(
                "this agent is not enrolled yet (no identity in {}): pass --token and --ca-fingerprint from the controller's \"Add host\" page",
                args.state_dir.display()
            );
        };
        let host = lifeboat_os::host::hostname();
        let name = args.name.clone().unwrap_or_else(|| host.clone());
        link::enroll(
            &link::Enrollment {
                controller: &args.controller,
                token,
                ca_fingerprint: fp,
                name: &name,
                hostname: &host,
            },
            &args.state_dir,
        )
        .await
        .context("enrollment failed")?;
    } else if args.token.is_some() {
        tracing::info!("already enrolled; ignoring --token");
    }
    let driver: Arc<dyn hypervisor::Hypervisor> = match args.driver {
        Driver::Libvirt => Arc::new(hypervisor::libvirt::LibvirtDriver::new(args.libvirt_uri)),
        Driver::Sim => {
            let name = args
                .name
                .clone()
                .unwrap_or_else(lifeboat_os::host::hostname);
            tracing::warn!(
                vms = args.sim_vms,
                "SIMULATED host: no real VM is managed (demo/load-test driver)"
            );
            Arc::new(hypervisor::sim::SimDriver::new(&name, args.sim_vms))
        }
    };
    link::run(args.controller, &args.state_dir, driver).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_starts_with_a_dash_is_a_value_not_a_flag() {
        let args = Args::try_parse_from([
            "lifeboat-agent",
            "--controller",
            "c:8444",
            "--token",
            "-d4f",
            "--ca-fingerprint",
            "sha256:00",
        ])
        .expect("parses");
        assert_eq!(args.token.as_deref(), Some("-d4f"));
    }
}
