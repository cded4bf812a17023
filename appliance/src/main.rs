//! `lifeboat`: the controller binary.

//!
//! The adapters live here: HTTPS ([`http`]), the REST API ([`api`]), the web
//! console ([`web`]) and the offline CLI ([`cli`]). Everything they do goes
//! through `lifeboat_core::ops`; the store and domain modules are private to
//! that crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeboat::{cli, http};
use lifeboat_core::model::{Log, LogLevel};
use lifeboat_core::ops::{ControllerConfig, Ops};

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Lifeboat: backup and failover controller for virtual machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller: web console and REST API, and the agent port.
    Serve(ServeArgs),
    /// Export, import and list backups in a datastore directory (offline
    /// storage on tape or any backup system; safe while the controller runs).
    #[command(subcommand)]
    Backup(cli::BackupCmd),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the controller keeps its database, certificates and datastores.
    #[arg(long, default_value = "./lifeboat-data")]
    data_dir: PathBuf,
    /// HTTPS address of the web console and API.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address agents connect to.
    #[arg(long, default_value = "0.0.0.0:8444")]
    agent_listen: SocketAddr,
    /// A directory under which local datastores may be added through the
    /// API; repeat for several. Default: DATA_DIR/datastores and /srv/lifeboat.
    #[arg(long = "datastore-root", value_name = "DIR")]
    datastore_roots: Vec<PathBuf>,
    /// The static agent served at /downloads/lifeboat-agent. Default:
    /// `lifeboat-agent` beside this program, when there is one.
    #[arg(long, value_name = "FILE")]
    agent_binary: Option<PathBuf>,
    /// Once listening, write the console and agent ports, the CA
    /// fingerprint and the version to FILE (key=value lines), for the
    /// appliance's text console.
    #[arg(long, value_name = "FILE")]
    announce: Option<PathBuf>,
    /// Give `admin` a new made-up password at start (the appliance
    /// console's reset), written to DATA_DIR/initial-admin-password.
    #[arg(long)]
    reset_admin_password: bool,
}

/// `lifeboat-agent` in the directory of the running program, if present.
fn agent_beside_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let agent = me.parent()?.join("lifeboat-agent");
    agent.is_file().then_some(agent)
}

/// Resolves on SIGINT or SIGTERM (the appliance's init stops the
/// controller with SIGTERM before it unmounts the data area).
async fn stop_requested() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// glibc gives busy threads their own malloc arenas, up to eight per core,
/// and keeps what they freed: with 2,000 agent connections served by the
/// runtime's workers that doubled the controller's resident memory (688 MiB
/// against 345 MiB with two arenas, `docs/PERFORMANCE.md`). Two arenas are
/// enough for a controller whose work is I/O. Called before any thread
/// starts.
#[cfg(target_env = "gnu")]
fn cap_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(target_env = "gnu"))]
fn cap_malloc_arenas() {}

fn main() -> anyhow::Result<()> {
    cap_malloc_arenas();
    let log = init_logging();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => serve(args, log),
        Cmd::Backup(cmd) => cli::run(cmd),
    }
}

/// The process's log: to stderr and into a [`Log`] the console shows, at
/// `LIFEBOAT_LOG` (an `EnvFilter`, default `info`) until the stored or a
/// newly chosen level replaces it. True when `LIFEBOAT_LOG` was given.
/// Beside it, with a filter of its own, the SNMP agent's wrong-community
/// drops are counted.
fn init_logging() -> (Arc<Log>, bool) {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, EnvFilter};
    let env = std::env::var("LIFEBOAT_LOG").ok();
    let given = env.as_deref().and_then(|v| EnvFilter::try_new(v).ok());
    let start = env
        .as_deref()
        .and_then(|l| LogLevel::parse(l.trim()))
        .unwrap_or_default();
    let from_env = given.is_some();
    let (filter, handle) =
        reload::Layer::new(given.unwrap_or_else(|| EnvFilter::new(start.as_str())));
    let log = Arc::new(Log::default());
    let logged = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .and_then(log.layer())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(logged)
        .with(
            lifeboat::snmp::BadCommunityCounter
                .with_filter(lifeboat::snmp::BadCommunityCounter::filter()),
        )
        .init();
    log.on_level_change(
        start,
        Box::new(move |level| {
            handle
                .reload(EnvFilter::new(level.as_str()))
                .map_err(|e| e.to_string())
        }),
    );
    (log, from_env)
}

fn serve(args: ServeArgs, (log, level_given): (Arc<Log>, bool)) -> anyhow::Result<()> {
    let admin_password = std::env::var("LIFEBOAT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let opened = Ops::open(ControllerConfig {
        data_dir: args.data_dir.clone(),
        agent_port: args.agent_listen.port(),
        datastore_roots: args.datastore_roots.clone(),
        admin_password,
        agent_binary: args.agent_binary.clone().or_else(agent_beside_me),
    })?;
    if let Some((generated, path)) = &opened.initial_admin_password {
        println!("Created user 'admin' with password: {generated}");
        println!(
            "(also written to {}; change it after first login)",
            path.display()
        );
    }
    let ops = opened.ops;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let web = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let agents = tokio::net::TcpListener::bind(args.agent_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.agent_listen))?;
        tracing::info!(
            "Lifeboat controller: console https://{} , agents {} , CA {}",
            args.listen,
            args.agent_listen,
            ops.ca_fingerprint()
        );
        println!("Web console: https://{}/", args.listen);
        if args.reset_admin_password {
            let path = ops.reset_admin_password_from_console().await?;
            tracing::info!("admin password reset; the new one is in {}", path.display());
        }
        if let Some(file) = &args.announce {
            let text = format!(
                "version={}\nconsole_port={}\nagent_port={}\nca_fingerprint={}\n",
                env!("CARGO_PKG_VERSION"),
                args.listen.port(),
                args.agent_listen.port(),
                ops.ca_fingerprint()
            );
            lifeboat_os::durable::AtomicWrite::new(0o644)
                .write(file, text.as_bytes())
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        ops.attach_log(log, level_given);
        ops.start_background_work();
        tokio::spawn(lifeboat::snmp::run(ops.clone()));
        tokio::select! {
            r = http::serve(ops.clone(), web) => r,
            r = ops.serve_agents(agents) => r.map_err(Into::into),
            why = stop_requested() => {
                tracing::info!("{why}; stopping");
                ops.flush_metrics().await;
                Ok(())
            }
        }
    })
}
