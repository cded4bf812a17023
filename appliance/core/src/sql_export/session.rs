//! One connection to the export database: open it (TLS, schema), read what
//! it holds, and write inventory changes and minutes of samples, each in
//! one transaction. Errors are sentences for the status line.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, Socket, Transaction};

use super::schema::{self, Changes, HostRow, VmRow};
use super::{SqlTarget, SqlTls};
use crate::metrics::archive::Row;
use crate::metrics::catalog::Kind;
use crate::metrics::ObjectKey;

/// Longest a connection attempt or one statement may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Serializes schema creation between controllers sharing a database.
const SCHEMA_LOCK: i64 = 0x6c69_6665_626f_6174; // "lifeboat"

/// The URL's connection settings; errors start with `url:`.
pub(crate) fn parse_url(url: &str) -> Result<Config, String> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err("url: postgresql://USER@HOST[:PORT]/DATABASE".into());
    }
    if url.contains('?') {
        return Err("url: no options after '?': tls and the CA have their own fields".into());
    }
    let config = Config::from_str(url).map_err(|e| format!("url: {e}"))?;
    if config.get_password().is_some() {
        return Err(
            "url: leave the password out; give it in the password field, where it is stored sealed"
                .into(),
        );
    }
    if config.get_user().is_none_or(str::is_empty) {
        return Err("url: name the user (postgresql://USER@HOST/DATABASE)".into());
    }
    if config.get_dbname().is_none_or(str::is_empty) {
        return Err("url: name the database (postgresql://USER@HOST/DATABASE)".into());
    }
    match config.get_hosts() {
        [Host::Tcp(_)] => {}
        [_] => return Err("url: the server must be a TCP host name or address".into()),
        _ => return Err("url: name one server".into()),
    }
    if config.get_ports().len() > 1 {
        return Err("url: name one server".into());
    }
    Ok(config)
}

/// The error as one line: the server's own message when it sent one.
fn describe(e: tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("the database said: {}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", describe(e))),
        Err(_) => Err(format!(
            "{what}: no answer in {} s",
            STATEMENT_TIMEOUT.as_secs()
        )),
    }
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) struct Session {
    client: Client,
}

impl Session {
    /// Connects, creates what is missing of the schema and checks its
    /// version.
    pub async fn open(target: &SqlTarget, password: &str) -> Result<Session, String> {
        let mut config = parse_url(&target.url)?;
        config
            .password(password)
            .application_name("lifeboat")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30));
        let server = match config.get_hosts() {
            [Host::Tcp(h)] => h.clone(),
            _ => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let cannot = |e: tokio_postgres::Error| {
            format!("cannot connect to {server}:{port}: {}", describe(e))
        };
        let client = match target.tls {
            SqlTls::VerifyFull => {
                config.ssl_mode(SslMode::Require);
                let tls = crate::pki::client_tls(&target.ca_pem)?;
                connect(&config, tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await
            }
            SqlTls::Disable => {
                config.ssl_mode(SslMode::Disable);
                connect(&config, tokio_postgres::NoTls).await
            }
        }
        .map_err(cannot)?;
        let mut session = Session { client };
        session.create_schema().await?;
        Ok(session)
    }

    async fn create_schema(&mut self) -> Result<(), String> {
        let tx = bounded("creating the schema", self.client.transaction()).await?;
        bounded(
            "creating the schema",
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]),
        )
        .await?;
        bounded("creating the schema", tx.batch_execute(&schema::ddl())).await?;
        let version: i32 = bounded(
            "reading the export state",
            tx.query_one(
                "SELECT schema_version FROM lifeboat_export_state WHERE id = 1",
                &[],
            ),
        )
        .await?
        .get(0);
        if version != schema::SCHEMA_VERSION {
            return Err(format!(
                "the database holds export schema version {version}; this controller writes version {}",
                schema::SCHEMA_VERSION
            ));
        }
        bounded("creating the schema", tx.commit()).await?;
        bounded(
            "creating the session's stages",
            self.client.batch_execute(&schema::stage_ddl()),
        )
        .await
    }

    /// Fails if the connection is gone or the server does not answer.
    pub async fn check(&self) -> Result<(), String> {
        if self.client.is_closed() {
            return Err("the database closed the connection".into());
        }
        bounded(
            "checking the connection",
            self.client.simple_query("SELECT 1"),
        )
        .await
        .map(drop)
    }

    /// The hosts and VMs the database holds as present.
    pub async fn inventory(&self) -> Result<schema::Inventory, String> {
        let mut inventory = schema::Inventory::default();
        let hosts = bounded(
            "reading hosts",
            self.client.query(
                &format!(
                    "SELECT {} FROM lifeboat_hosts WHERE removed_at IS NULL",
                    schema::record(&schema::HOST_COLUMNS).join(", ")
                ),
                &[],
            ),
        )
        .await?;
        for r in hosts {
            let row = HostRow {
                host_id: r.get(0),
                name: r.get(1),
                address: r.get(2),
                status: r.get(3),
                agent_version: r.get(4),
                hypervisor: r.get(5),
                cpus: r.get(6),
                memory_bytes: r.get(7),
            };
            inventory.hosts.insert(row.host_id.clone(), row);
        }
        let vms = bounded(
            "reading VMs",
            self.client.query(
                &format!(
                    "SELECT {} FROM lifeboat_vms WHERE removed_at IS NULL",
                    schema::record(&schema::VM_COLUMNS).join(", ")
                ),
                &[],
            ),
        )
        .await?;
        for r in vms {
            let categories: serde_json::Value = r.get(7);
            let row = VmRow {
                vm_uuid: r.get(0),
                name: r.get(1),
                host_id: r.get(2),
                power_state: r.get(3),
                vcpus: r.get(4),
                memory_bytes: r.get(5),
                disk_bytes: r.get(6),
                // Anything else (edited by hand) differs and is rewritten.
                categories: serde_json::from_value(categories).unwrap_or_default(),
            };
            inventory.vms.insert(row.vm_uuid.clone(), row);
        }
        Ok(inventory)
    }

    /// Writes `changes` as of `now` in one transaction.
    pub async fn write_inventory(&mut self, changes: &Changes<'_>, now: u64) -> Result<(), String> {
        let tx = bounded("writing inventory", self.client.transaction()).await?;
        {
            let (stage, types) = ("lifeboat_hosts_stage", schema::host_types());
            let writer = copy_in(&tx, stage, &schema::HOST_COLUMNS, &types).await?;
            let mut writer = std::pin::pin!(writer);
            for (change, h) in &changes.hosts {
                let values: [&(dyn ToSql + Sync); 9] = [
                    &h.host_id,
                    &h.name,
                    &h.address,
                    &h.status,
                    &h.agent_version,
                    &h.hypervisor,
                    &h.cpus,
                    &h.memory_bytes,
                    &change.as_str(),
                ];
                bounded("writing inventory", writer.as_mut().write(&values)).await?;
            }
            bounded("writing inventory", writer.finish()).await?;
        }
        {
            let (stage, types) = ("lifeboat_vms_stage", schema::vm_types());
            let writer = copy_in(&tx, stage, &schema::VM_COLUMNS, &types).await?;
            let mut writer = std::pin::pin!(writer);
            for (change, v) in &changes.vms {
                let categories = serde_json::to_value(&v.categories).unwrap_or_default();
                let values: [&(dyn ToSql + Sync); 9] = [
                    &v.vm_uuid,
                    &v.name,
                    &v.host_id,
                    &v.power_state,
                    &v.vcpus,
                    &v.memory_bytes,
                    &v.disk_bytes,
                    &categories,
                    &change.as_str(),
                ];
                bounded("writing inventory", writer.as_mut().write(&values)).await?;
            }
            bounded("writing inventory", writer.finish()).await?;
        }
        let now = at(now);
        for sql in schema::merge_inventory() {
            bounded("writing inventory", tx.execute(&sql, &[&now])).await?;
        }
        bounded("writing inventory", tx.commit()).await
    }

    /// Where the exported minutes end (an absolute minute); a database new
    /// to the export starts at `start`.
    pub async fn metrics_cursor(&self, start: u64) -> Result<u64, String> {
        let row = bounded(
            "reading the export state",
            self.client.query_one(
                "UPDATE lifeboat_export_state SET metrics_through = COALESCE(metrics_through, $1) \
                 WHERE id = 1 RETURNING metrics_through",
                &[&at(start * 60)],
            ),
        )
        .await?;
        Ok(unix(row.get(0)) / 60)
    }

    /// Writes the rows of minutes `[from, to)` and moves the cursor to
    /// `to`, in one transaction; `None` if the cursor was not at `from`
    /// (another writer moved it), otherwise the rows the database lacked.
    pub async fn write_minutes(
        &mut self,
        from: u64,
        to: u64,
        rows: &[(ObjectKey, u64, Row)],
    ) -> Result<Option<u64>, String> {
        let tx = bounded("writing samples", self.client.transaction()).await?;
        let through: Option<SystemTime> = bounded(
            "writing samples",
            tx.query_one(
                "SELECT metrics_through FROM lifeboat_export_state WHERE id = 1 FOR UPDATE",
                &[],
            ),
        )
        .await?
        .get(0);
        if through.map(unix) != Some(from * 60) {
            return Ok(None);
        }
        let mut inserted = 0;
        for kind in [Kind::Host, Kind::Vm] {
            let (table, id) = schema::sample_table(kind);
            let stage = schema::stage_table(table);
            let columns: Vec<String> = [id.to_string(), "at".to_string()]
                .into_iter()
                .chain(schema::sample_columns(kind))
                .collect();
            let mut types = vec![Type::TEXT, Type::TIMESTAMPTZ];
            types.resize(columns.len(), Type::FLOAT8);
            let writer = copy_in(&tx, &stage, &columns, &types).await?;
            let mut writer = std::pin::pin!(writer);
            for (object, minute, row) in rows.iter().filter(|(o, ..)| o.kind == kind) {
                let time = at(minute * 60);
                let values: Vec<Option<f64>> = row
                    .iter()
                    .flat_map(|cell| [cell.map(|c| c.0), cell.map(|c| c.1)])
                    .collect();
                let mut refs: Vec<&(dyn ToSql + Sync)> = vec![&object.id, &time];
                refs.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
                bounded("writing samples", writer.as_mut().write(&refs)).await?;
            }
            bounded("writing samples", writer.finish()).await?;
            inserted += bounded(
                "writing samples",
                tx.execute(
                    &format!("INSERT INTO {table} SELECT * FROM {stage} ON CONFLICT DO NOTHING"),
                    &[],
                ),
            )
            .await?;
        }
        bounded(
            "writing samples",
            tx.execute(
                "UPDATE lifeboat_export_state SET metrics_through = $1, updated_at = now() WHERE id = 1",
                &[&at(to * 60)],
            ),
        )
        .await?;
        bounded("writing samples", tx.commit()).await?;
        Ok(Some(inserted))
    }
}

async fn copy_in(
    tx: &Transaction<'_>,
    table: &str,
    columns: &[impl AsRef<str>],
    types: &[Type],
) -> Result<BinaryCopyInWriter, String> {
    let columns: Vec<&str> = columns.iter().map(AsRef::as_ref).collect();
    let sink = bounded(
        "copying",
        tx.copy_in(&format!(
            "COPY {table} ({}) FROM STDIN BINARY",
            columns.join(", ")
        )),
    )
    .await?;
    Ok(BinaryCopyInWriter::new(sink, types))
}

/// Connects and drives the connection in its own task.
async fn connect<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(drive(connection));
    Ok(client)
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!("SQL export connection: {}", describe(e));
    }
}
