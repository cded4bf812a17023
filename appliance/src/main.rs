//! `lifeboat`: the controller binary.

//!
//! The adapters live here: HTTPS ([`http`]), the REST API ([`api`]), the web
//! console ([`web`]) and the offline CLI ([`cli`]). Everything they do goes
//! through `lifeboat_core::ops`; the store and domain modules are private to
//! that crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lifeboat::{cli, http};
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Backup(cmd) => cli::run(cmd),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let admin_password = std::env::var("LIFEBOAT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let opened = Ops::open(ControllerConfig {
        data_dir: args.data_dir.clone(),
        agent_port: args.agent_listen.port(),
        datastore_roots: args.datastore_roots.clone(),
        admin_password,
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
        ops.start_background_work();
        tokio::select! {
            r = http::serve(ops.clone(), web) => r,
            r = ops.serve_agents(agents) => r.map_err(Into::into),
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                Ok(())
            }
        }
    })
}
