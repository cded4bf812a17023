//! `lifeboat-agent`: runs on each virtualization host, reports its VMs to the
//! controller and carries out the controller's commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Read the enrollment token from this file instead (first start only);
    /// with `--sim-hosts`, one token per line, one line per host.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
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
    /// With `--driver sim`, play this many simulated hosts in this one
    /// process (NAME-0000, NAME-0001, ...), each with its own identity in
    /// STATE_DIR/NAME-NNNN: a large fleet for load tests without a process
    /// per host.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sim_hosts: u32,
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
    let mut tokens = enrollment_tokens(&args)?.into_iter();
    let name = args
        .name
        .clone()
        .unwrap_or_else(lifeboat_os::host::hostname);
    if args.sim_hosts > 1 {
        if args.driver != Driver::Sim {
            bail!("--sim-hosts needs --driver sim");
        }
        return sim_fleet(&args, &name, &mut tokens).await;
    }
    enroll_once(&args, &args.state_dir, &name, &mut tokens).await?;
    let driver: Arc<dyn hypervisor::Hypervisor> = match args.driver {
        Driver::Libvirt => Arc::new(hypervisor::libvirt::LibvirtDriver::new(
            args.libvirt_uri.clone(),
        )),
        Driver::Sim => {
            tracing::warn!(
                vms = args.sim_vms,
                "SIMULATED host: no real VM is managed (demo/load-test driver)"
            );
            Arc::new(hypervisor::sim::SimDriver::new(&name, args.sim_vms))
        }
    };
    let d = driver.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || d.sweep_sandboxes()).await? {
        tracing::warn!("cannot look for boot-verification sandboxes left over: {e}");
    }
    link::run(args.controller, &args.state_dir, driver).await
}

/// `--token`, or the lines of `--token-file` (blank lines skipped).
fn enrollment_tokens(args: &Args) -> anyhow::Result<Vec<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect());
    }
    Ok(args.token.iter().cloned().collect())
}

/// Enrolls the host whose identity lives in `state_dir` unless it already
/// has one, taking the next token.
async fn enroll_once(
    args: &Args,
    state_dir: &Path,
    name: &str,
    tokens: &mut impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    if identity::is_enrolled(state_dir) {
        if args.token.is_some() || args.token_file.is_some() {
            tracing::info!(host = name, "already enrolled; ignoring the token");
        }
        return Ok(());
    }
    let (Some(token), Some(fp)) = (tokens.next(), &args.ca_fingerprint) else {
        bail!(
            "{name} is not enrolled yet (no identity in {}): pass --token (or --token-file) and --ca-fingerprint from the controller's \"Add host\" page",
            state_dir.display()
        );
    };
    link::enroll(
        &link::Enrollment {
            controller: &args.controller,
            token: &token,
            ca_fingerprint: fp,
            name,
            hostname: &lifeboat_os::host::hostname(),
        },
        state_dir,
    )
    .await
    .with_context(|| format!("enrollment of {name} failed"))
}

/// `--sim-hosts N`: N simulated hosts in this process, their links started
/// spread over two seconds so their samples do not arrive in lock-step.
async fn sim_fleet(
    args: &Args,
    base: &str,
    tokens: &mut impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    let hosts = args.sim_hosts;
    tracing::warn!(
        hosts,
        vms_each = args.sim_vms,
        "SIMULATED hosts: no real VM is managed (demo/load-test driver)"
    );
    let mut links = tokio::task::JoinSet::new();
    for i in 0..hosts {
        let name = format!("{base}-{i:04}");
        let state_dir = args.state_dir.join(&name);
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        enroll_once(args, &state_dir, &name, tokens).await?;
        let driver = Arc::new(hypervisor::sim::SimDriver::new(&name, args.sim_vms));
        let controller = args.controller.clone();
        let delay = Duration::from_millis(2000 * u64::from(i) / u64::from(hosts));
        links.spawn(async move {
            tokio::time::sleep(delay).await;
            link::run(controller, &state_dir, driver)
                .await
                .with_context(|| format!("simulated host {name}"))
        });
    }
    while let Some(ended) = links.join_next().await {
        ended.context("a simulated host's link panicked")??;
    }
    Ok(())
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

    #[test]
    fn a_token_file_gives_one_token_per_line_and_excludes_token() {
        let dir = std::env::temp_dir().join(format!("lb-token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("tokens");
        std::fs::write(&file, "a1\n\n  b2 \nc3").expect("write");
        let base = ["lifeboat-agent", "--controller", "c:8444", "--token-file"];
        let args = Args::try_parse_from(base.iter().copied().chain([file.to_str().unwrap()]))
            .expect("parses");
        assert_eq!(enrollment_tokens(&args).expect("read"), ["a1", "b2", "c3"]);
        let both = base
            .iter()
            .copied()
            .chain([file.to_str().unwrap(), "--token", "x"]);
        assert!(Args::try_parse_from(both).is_err());
        for hosts in ["0", "10001"] {
            let fleet = [
                "lifeboat-agent",
                "--controller",
                "c:1",
                "--sim-hosts",
                hosts,
            ];
            assert!(Args::try_parse_from(fleet).is_err(), "{hosts}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
