//! `lifeboat`: the controller binary.

mod access;
mod api;
mod backup;
mod cli;
mod clock;
mod ha;
mod http;
mod hub;
mod inventory;
mod jobs;
mod ops;
mod pki;
mod secrets;
mod store;
mod web;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

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

fn write_initial_password(data_dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = data_dir.join("initial-admin-password");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{password}")?;
    Ok(path)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let pki = Arc::new(pki::Pki::load_or_create(&args.data_dir.join("tls"))?);
    let store = store::Store::open(&args.data_dir.join("lifeboat.redb"))
        .context("cannot open the store")?;
    tracing::info!("store schema version {}", store.schema_version()?);

    let access = access::Access::load(store.clone())?;
    let env_password = std::env::var("LIFEBOAT_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(generated) = access.ensure_admin(env_password)? {
        let path = write_initial_password(&args.data_dir, &generated)?;
        println!("Created user 'admin' with password: {generated}");
        println!(
            "(also written to {}; change it after first login)",
            path.display()
        );
    }
    let inventory = Arc::new(inventory::Inventory::load(store.clone())?);
    let tokens = hub::enrollment::EnrollmentTokens::load(store.clone())?;
    let hub = Arc::new(hub::Hub::new(inventory.clone(), pki.clone(), tokens));
    let ops = Arc::new(ops::Ops {
        access,
        audit: access::audit::AuditLog::load(store.clone())?,
        inventory,
        hub: hub.clone(),
        jobs: Arc::new(jobs::Jobs::load(store.clone())?),
        pki: pki.clone(),
        agent_port: args.agent_listen.port(),
        datastores: backup::datastores::Datastores::open(
            &args.data_dir,
            if args.datastore_roots.is_empty() {
                vec![
                    args.data_dir.join("datastores"),
                    PathBuf::from("/srv/lifeboat"),
                ]
            } else {
                args.datastore_roots.clone()
            },
            store.clone(),
        )?,
        policies: store::book::Book::load(store.clone(), store::Table::BackupPolicies)?,
        ha: ha::Ha::load(store.clone())?,
        vm_tags: store::book::Book::load(store.clone(), store::Table::VmCategories)?,
        category_rules: store::book::Book::load(store.clone(), store::Table::CategoryRules)?,
        directories: store::book::Book::load(store.clone(), store::Table::Directories)?,
        secrets: Arc::new(secrets::Secrets::load_or_create(&args.data_dir)?),
    });

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
            pki.ca_fingerprint()
        );
        println!("Web console: https://{}/", args.listen);
        let scheduled = ops.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
            loop {
                tick.tick().await;
                scheduled.scheduler_tick().await;
            }
        });
        tokio::spawn(ops.clone().ha_loop());
        tokio::select! {
            r = http::serve(ops, web) => r,
            r = hub.serve(agents) => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                Ok(())
            }
        }
    })
}
