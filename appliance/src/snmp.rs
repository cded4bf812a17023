//! SNMP adapter: an agent (async-snmp) on UDP that serves MIB-II `system`
//! and LIFEBOAT-MIB (`assets/LIFEBOAT-MIB.txt`) through `ops`, restarted
//! whenever its settings change.
//!
//! Who may ask: a v2c community only from its source networks, a v3 user
//! only with authPriv (VACM); v1 is refused. Each acts as a Lifeboat user,
//! so a VM hidden from that user is absent from every table and count. A
//! GETBULK walk asks for many OIDs in a row: each user's view is computed
//! once and answered from for [`VIEW_TTL`]; after that it is computed again
//! in the background while requests are still answered from it.
//!
//! The same adapter sends alert channels' notifications (LIFEBOAT-MIB's
//! lbNotifications carrying an lbAlarmEntry): v2c traps and informs, v3
//! authPriv traps (from the controller's engine, the agent's) and informs
//! (to the receiver's, discovered).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_snmp::agent::{Agent, SecurityModel};
use async_snmp::handler::{
    BoxFuture, GetNextResult, GetResult, HandlerError, HandlerResult, MibHandler, RequestContext,
    SecurityName,
};
use async_snmp::{
    Auth, AuthoritativeEngine, Client, Oid, PersistedAuthoritativeEngine, PrivProtocol, Retry,
    SecurityLevel, UsmConfig, Value, VarBind,
};
use lifeboat_core::model::{
    Alert, AuthProtocol, ChannelConfig, EngineState, SnmpNotification, SnmpVersion, ENTERPRISE,
};
use lifeboat_core::ops::{Ops, SnmpAgentConfig, SnmpAlarm, SnmpNotifier, SnmpView};

/// How long one user's view of the MIB is reused.
const VIEW_TTL: Duration = Duration::from_secs(2);
/// Wait before starting again after the agent stopped on an error.
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// How often the agent's refusal counters are added up (and logged when
/// they moved).
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// What the agent refused, by kind: (name in `/metrics`, its counter in the
/// running agent). Totals since the controller started.
type AgentCounter = fn(&Agent) -> u32;
const REFUSAL_KINDS: [(&str, AgentCounter); 9] = [
    ("asn_parse_errors", Agent::snmp_in_asn_parse_errs),
    ("invalid_messages", Agent::snmp_invalid_msgs),
    (
        "unknown_security_models",
        Agent::snmp_unknown_security_models,
    ),
    ("silent_drops", Agent::snmp_silent_drops),
    ("usm_unknown_user_names", Agent::usm_unknown_usernames),
    ("usm_wrong_digests", Agent::usm_wrong_digests),
    ("usm_not_in_time_windows", Agent::usm_not_in_time_windows),
    (
        "usm_unsupported_security_levels",
        Agent::usm_unsupported_sec_levels,
    ),
    ("usm_decryption_errors", Agent::usm_decryption_errors),
];
/// The refusals counted here rather than by the agent.
const OWN_KINDS: [&str; 2] = ["community_outside_networks", "bad_community"];
const KINDS: usize = REFUSAL_KINDS.len() + OWN_KINDS.len();
static REFUSED: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
/// Where in [`REFUSED`] the [`OWN_KINDS`] are.
const OUTSIDE_NETWORKS: usize = REFUSAL_KINDS.len();
const BAD_COMMUNITY: usize = REFUSAL_KINDS.len() + 1;

/// (kind, count) of the requests the agent refused since the controller
/// started (for `/metrics`).
pub fn refused_counts() -> Vec<(&'static str, u64)> {
    REFUSAL_KINDS
        .iter()
        .map(|(name, _)| *name)
        .chain(OWN_KINDS)
        .zip(&REFUSED)
        .map(|(name, n)| (name, n.load(Ordering::Relaxed)))
        .collect()
}

/// Adds what `agent` refused since `seen` to the totals, and logs what
/// was refused (by the agent or here) since the last call.
fn count_refusals(agent: &Agent, seen: &mut [u32; REFUSAL_KINDS.len()]) {
    for (i, (_, counter)) in REFUSAL_KINDS.iter().enumerate() {
        let now = counter(agent);
        REFUSED[i].fetch_add(u64::from(now.wrapping_sub(seen[i])), Ordering::Relaxed);
        seen[i] = now;
    }
    let moved: Vec<String> = refused_counts()
        .into_iter()
        .zip(&LOGGED)
        .filter_map(|((name, total), logged)| {
            let delta = total.saturating_sub(logged.swap(total, Ordering::Relaxed));
            (delta > 0).then(|| format!("{name} {delta}"))
        })
        .collect();
    if !moved.is_empty() {
        tracing::warn!("SNMP requests refused: {}", moved.join(", "));
    }
}

/// The totals as last logged.
static LOGGED: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

/// Counts the v1/v2c requests with a community the agent does not know:
/// the agent drops them without an answer, as SNMP wants, and says so
/// only in a debug event, which this layer watches for (whatever the log
/// level).
pub struct BadCommunityCounter;

impl BadCommunityCounter {
    /// What this layer needs to see, for its per-layer filter.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target("async_snmp::agent", tracing::Level::DEBUG)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BadCommunityCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 |= format!("{v:?}") == "invalid community string";
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            REFUSED[BAD_COMMUNITY].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An inform's wait for its acknowledgement, and how often it is sent
/// again within one delivery attempt (the alert's own back-off follows).
const INFORM_TIMEOUT: Duration = Duration::from_secs(3);
const INFORM_RETRIES: u32 = 2;

const SYSTEM: [u32; 7] = [1, 3, 6, 1, 2, 1, 1];
/// LIFEBOAT-MIB's module, and its `lbObjects`.
const LIFEBOAT: [u32; 8] = [1, 3, 6, 1, 4, 1, ENTERPRISE, 1];
const OBJECTS: [u32; 9] = [1, 3, 6, 1, 4, 1, ENTERPRISE, 1, 1];

fn oid(prefix: &[u32], rest: &[u32]) -> Oid {
    Oid::new(prefix.iter().chain(rest).copied())
}

/// Runs the agent for as long as the controller runs, and sends the
/// alert channels' notifications.
pub async fn run(ops: Arc<Ops>) {
    let shared = Arc::new(Shared {
        ops: ops.clone(),
        engine: Mutex::new(None),
        started: Instant::now(),
    });
    ops.set_snmp_notifier(shared.clone());
    loop {
        let changed = ops.snmp_settings_changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let config = match ops.snmp_agent_config() {
            Ok(Some(config)) => config,
            Ok(None) => {
                changed.await;
                continue;
            }
            Err(e) => {
                tracing::error!("SNMP agent not started: {e}");
                changed.await;
                continue;
            }
        };
        let listen = config.listen.clone();
        let agent = match build(&shared, config).await {
            Ok(agent) => agent,
            Err(e) => {
                tracing::error!("SNMP agent not started on {listen}: {e}");
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                }
                continue;
            }
        };
        tracing::info!("SNMP agent listening on {}", agent.local_addr());
        let mut seen = [0u32; REFUSAL_KINDS.len()];
        let mut tick = tokio::time::interval(COUNT_EVERY);
        let running = agent.run();
        tokio::pin!(running);
        loop {
            tokio::select! {
                ended = &mut running => {
                    if let Err(e) = ended {
                        tracing::error!("SNMP agent stopped: {e}");
                    }
                    count_refusals(&agent, &mut seen);
                    tokio::time::sleep(RESTART_DELAY).await;
                    break;
                }
                _ = &mut changed => {
                    tracing::info!("SNMP settings changed; restarting the agent");
                    agent.cancel();
                    count_refusals(&agent, &mut seen);
                    break;
                }
                _ = tick.tick() => count_refusals(&agent, &mut seen),
            }
        }
    }
}

/// What the agent and the notifications share for the life of the
/// process: the local engine (one boot per start of the controller) and
/// the start time (sysUpTime).
struct Shared {
    ops: Arc<Ops>,
    engine: Mutex<Option<AuthoritativeEngine>>,
    started: Instant,
}

impl Shared {
    /// The local engine, made (and its boot stored) on first use.
    fn engine(&self) -> Result<AuthoritativeEngine, String> {
        let mut engine = self.engine.lock().expect("snmp engine");
        if let Some(e) = engine.as_ref() {
            return Ok(e.clone());
        }
        let made = new_engine(&self.ops)?;
        *engine = Some(made.clone());
        Ok(made)
    }

    fn uptime(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis() / 10).unwrap_or(u32::MAX)
    }

    /// Sends one alert to the receiver `config` names.
    async fn notify(&self, config: &ChannelConfig, alert: &Alert) -> Result<(), String> {
        let ChannelConfig::Snmp {
            target,
            version,
            notification,
            community,
            user,
            auth,
            auth_password,
            priv_password,
        } = config
        else {
            return Err("not an SNMP channel".into());
        };
        let alarm = SnmpAlarm::of(alert);
        let varbinds = alarm_columns(&alarm)
            .into_iter()
            .map(|(c, v)| VarBind::new(oid(&OBJECTS, &[5, 1, c, alarm.index]), v))
            .collect();
        let auth: Auth = match version {
            SnmpVersion::V2c => Auth::v2c(community.as_str()),
            SnmpVersion::V3 => UsmConfig::new(user.clone().into_bytes())
                .auth_priv(
                    usm_auth(*auth),
                    auth_password,
                    PrivProtocol::Aes128,
                    priv_password,
                )
                .map_err(|e| format!("user {user}: {e}"))?
                .into(),
        };
        let retry = Retry::fixed(INFORM_RETRIES, Duration::ZERO).map_err(|e| e.to_string())?;
        let mut builder = Client::builder(target.as_str(), auth)
            .request_timeout(INFORM_TIMEOUT)
            .retry(retry);
        if (*version, *notification) == (SnmpVersion::V3, SnmpNotification::Trap) {
            // The sender of a v3 trap is its authoritative engine.
            builder = builder.local_authoritative_engine(self.engine()?);
        }
        let client = builder
            .connect()
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let trap_oid = oid(&LIFEBOAT, &[0, alarm.notification]);
        let sent = match notification {
            SnmpNotification::Trap => client.send_trap(&trap_oid, self.uptime(), varbinds).await,
            SnmpNotification::Inform => {
                client.send_inform(&trap_oid, self.uptime(), varbinds).await
            }
        };
        sent.map_err(|e| match notification {
            SnmpNotification::Inform => format!("{target}: the inform was not acknowledged: {e}"),
            SnmpNotification::Trap => format!("{target}: {e}"),
        })
    }
}

impl SnmpNotifier for Shared {
    fn notify<'a>(
        &'a self,
        config: &'a ChannelConfig,
        alert: &'a Alert,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(Shared::notify(self, config, alert))
    }
}

fn usm_auth(auth: AuthProtocol) -> async_snmp::AuthProtocol {
    match auth {
        AuthProtocol::Sha1 => async_snmp::AuthProtocol::Sha1,
        AuthProtocol::Sha256 => async_snmp::AuthProtocol::Sha256,
    }
}

/// The engine, its boot count one higher than the stored one and stored
/// before use (and again whenever it moves), so no USM message from an
/// earlier run can be replayed.
fn new_engine(ops: &Arc<Ops>) -> Result<AuthoritativeEngine, String> {
    let stored = ops.snmp_engine();
    let id = hex::decode(&stored.engine_id).map_err(|e| format!("engine ID: {e}"))?;
    let saver = ops.clone();
    // Called on this runtime's threads (the controller's runtime has
    // several, as block_in_place needs).
    let persist = move |p: &PersistedAuthoritativeEngine| {
        let state = EngineState {
            engine_id: hex::encode(p.engine_id()),
            boots: p.engine_boots(),
        };
        tokio::task::block_in_place(|| saver.snmp_save_engine(&state))
    };
    let engine = if stored.boots == 0 {
        AuthoritativeEngine::install(id, persist)
    } else {
        let previous =
            PersistedAuthoritativeEngine::new(id, stored.boots).map_err(|e| e.to_string())?;
        AuthoritativeEngine::restart(previous, persist)
    };
    engine.map_err(|e| e.to_string())
}

async fn build(shared: &Arc<Shared>, config: SnmpAgentConfig) -> Result<Agent, String> {
    let mib = Arc::new(Mib {
        shared: shared.clone(),
        communities: config
            .communities
            .iter()
            .map(|c| (c.community.clone(), (c.networks.clone(), c.user.clone())))
            .collect(),
        usm: config
            .users
            .iter()
            .map(|u| (u.name.clone(), u.user.clone()))
            .collect(),
        views: Mutex::default(),
    });
    let mut builder = Agent::builder()
        .bind(config.listen.clone())
        .authoritative_engine(shared.engine()?)
        .communities(
            config
                .communities
                .iter()
                .map(|c| c.community.as_bytes().to_vec()),
        );
    for u in &config.users {
        let auth = usm_auth(u.auth);
        builder = builder
            .usm_user(u.name.clone().into_bytes(), |user| {
                user.auth_priv(
                    auth,
                    &u.auth_password,
                    async_snmp::PrivProtocol::Aes128,
                    &u.priv_password,
                )
            })
            .map_err(|e| format!("user {}: {e}", u.name))?;
    }
    let communities: Vec<Vec<u8>> = config
        .communities
        .iter()
        .map(|c| c.community.as_bytes().to_vec())
        .collect();
    let users: Vec<Vec<u8>> = config
        .users
        .iter()
        .map(|u| u.name.as_bytes().to_vec())
        .collect();
    builder
        .handler(
            Oid::from_slice(&SYSTEM),
            Arc::new(Subtree(mib.clone(), Oid::from_slice(&SYSTEM))),
        )
        .handler(
            Oid::from_slice(&LIFEBOAT),
            Arc::new(Subtree(mib, Oid::from_slice(&LIFEBOAT))),
        )
        .vacm(|mut v| {
            // v2c communities and authPriv v3 users read the two subtrees;
            // no group for v1, nothing below authPriv for v3, no writes.
            for c in communities {
                v = v.group(c, SecurityModel::V2c, "communities");
            }
            for u in users {
                v = v.group(u, SecurityModel::Usm, "users");
            }
            v.access(
                "communities",
                SecurityModel::V2c,
                SecurityLevel::NoAuthNoPriv,
                |a| a.read_view("lifeboat"),
            )
            .access("users", SecurityModel::Usm, SecurityLevel::AuthPriv, |a| {
                a.read_view("lifeboat")
            })
            .view("lifeboat", |view| {
                view.include(Oid::from_slice(&SYSTEM))
                    .include(Oid::from_slice(&LIFEBOAT))
            })
        })
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Every instance one user sees, in OID order.
type Instances = BTreeMap<Oid, Value>;

/// What every request shares: who each community or user acts as, and the
/// views computed recently.
struct Mib {
    shared: Arc<Shared>,
    /// Community → (source networks, Lifeboat user).
    communities: HashMap<String, (Vec<ipnet::IpNet>, String)>,
    /// USM user name → Lifeboat user.
    usm: HashMap<String, String>,
    /// Lifeboat user → its view computed last.
    views: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    at: Instant,
    objects: Arc<Instances>,
    /// A newer one is being computed.
    refreshing: bool,
}

impl Mib {
    /// The Lifeboat user a request acts as; an error (answered as genErr)
    /// for a community used from outside its networks.
    fn user_of(&self, ctx: &RequestContext) -> HandlerResult<String> {
        match ctx.security_name() {
            SecurityName::Community(c) => {
                let name = String::from_utf8_lossy(c.as_bytes());
                let (networks, user) = self
                    .communities
                    .get(name.as_ref())
                    .ok_or_else(|| HandlerError::new("unknown community"))?;
                let source: SocketAddr = ctx.source();
                let ip = source.ip().to_canonical();
                if !networks.iter().any(|n| n.contains(&ip)) {
                    // Logged with the other refusals, at most every 5 s.
                    REFUSED[OUTSIDE_NETWORKS].fetch_add(1, Ordering::Relaxed);
                    return Err(HandlerError::new("source outside the community's networks"));
                }
                Ok(user.clone())
            }
            SecurityName::Usm(name) => self
                .usm
                .get(String::from_utf8_lossy(name).as_ref())
                .cloned()
                .ok_or_else(|| HandlerError::new("unknown user")),
        }
    }

    /// The caller's view. One older than [`VIEW_TTL`] is still answered
    /// from while a newer one is computed in the background, so no request
    /// waits for a whole estate's view but the user's first.
    async fn view(mib: &Arc<Mib>, ctx: &RequestContext) -> HandlerResult<Arc<Instances>> {
        let user = mib.user_of(ctx)?;
        let source = || format!("snmp {}", ctx.source().ip());
        if let Some(cached) = mib.views.lock().expect("snmp views").get_mut(&user) {
            if cached.at.elapsed() >= VIEW_TTL && !cached.refreshing {
                cached.refreshing = true;
                let (mib, user, source) = (mib.clone(), user.clone(), source());
                tokio::spawn(async move {
                    let fresh = mib.compute(&user, &source).await;
                    let mut views = mib.views.lock().expect("snmp views");
                    match fresh {
                        Ok(objects) => {
                            views.insert(user, Cached::new(objects));
                        }
                        // The user is gone or lost the privilege: nothing
                        // more is answered from the old view.
                        Err(_) => {
                            views.remove(&user);
                        }
                    }
                });
            }
            return Ok(cached.objects.clone());
        }
        let objects = mib.compute(&user, &source()).await?;
        mib.views
            .lock()
            .expect("snmp views")
            .insert(user, Cached::new(objects.clone()));
        Ok(objects)
    }

    async fn compute(&self, user: &str, source: &str) -> HandlerResult<Arc<Instances>> {
        let who = self
            .shared
            .ops
            .snmp_principal(user, source)
            .ok_or_else(|| HandlerError::new("the community's Lifeboat user is gone"))?;
        let view = self
            .shared
            .ops
            .snmp_view(&who)
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        Ok(Arc::new(objects(&view, self.shared.uptime())))
    }
}

impl Cached {
    fn new(objects: Arc<Instances>) -> Cached {
        Cached {
            at: Instant::now(),
            objects,
            refreshing: false,
        }
    }
}

/// Text as an OCTET STRING, cut to `max` bytes at a character boundary.
fn text(s: &str, max: usize) -> Value {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::OctetString(s.as_bytes()[..end].to_vec().into())
}

/// SNMPv2-TC DateAndTime, UTC, 11 octets.
fn date_and_time(unix: Option<u64>) -> Value {
    let t = unix
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u as i64).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let year = (t.year() as u16).to_be_bytes();
    let octets = vec![
        year[0],
        year[1],
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        0,
        b'+',
        0,
        0,
    ];
    Value::OctetString(octets.into())
}

/// Every instance `view` shows, in OID order.
fn objects(view: &SnmpView, uptime: u32) -> Instances {
    let mut m = BTreeMap::new();
    let mut sys = |arc: u32, v: Value| m.insert(oid(&SYSTEM, &[arc, 0]), v);
    sys(
        1,
        text(&format!("Lifeboat controller {}", view.version), 255),
    );
    sys(2, Value::ObjectIdentifier(Oid::from_slice(&LIFEBOAT)));
    sys(3, Value::TimeTicks(uptime));
    sys(4, text("", 255));
    sys(5, text(&lifeboat_os::host::hostname(), 255));
    sys(6, text("", 255));
    // Applications (layer 7).
    sys(7, Value::Integer(72));
    let mut ctl = |arc: u32, v: Value| m.insert(oid(&OBJECTS, &[1, arc, 0]), v);
    ctl(1, text(view.version, 64));
    ctl(2, Value::Integer(if view.degraded { 2 } else { 1 }));
    ctl(3, Value::Gauge32(view.hosts_total));
    ctl(4, Value::Gauge32(view.hosts_online));
    ctl(5, Value::Gauge32(view.vms_total));
    ctl(6, Value::Gauge32(view.vms_running));
    ctl(7, Value::Gauge32(view.jobs_running));
    for h in &view.hosts {
        let mut col = |c: u32, v: Value| m.insert(oid(&OBJECTS, &[2, 1, c, h.index]), v);
        col(2, text(&h.name, 255));
        col(3, text(&h.address, 255));
        col(4, Value::Integer(h.state));
        col(5, Value::Gauge32(h.vm_count));
        col(6, Value::Gauge32(h.cpu));
        col(7, Value::Gauge32(h.memory));
        col(8, text(&h.id, 64));
    }
    for v in &view.vms {
        let mut col = |c: u32, val: Value| m.insert(oid(&OBJECTS, &[3, 1, c, v.index]), val);
        col(2, text(&v.name, 255));
        col(3, text(&v.uuid, 36));
        col(4, text(&v.host, 255));
        col(5, Value::Integer(v.power));
        col(6, Value::Integer(if v.protected { 2 } else { 1 }));
        col(7, Value::Gauge32(v.cpu));
        col(8, Value::Gauge32(v.memory));
        col(9, date_and_time(v.last_backup_at));
        col(10, Value::Integer(v.last_backup_result));
    }
    for d in &view.datastores {
        let mut col = |c: u32, v: Value| m.insert(oid(&OBJECTS, &[4, 1, c, d.index]), v);
        col(2, text(&d.name, 255));
        col(3, Value::Gauge32(d.capacity_mib));
        col(4, Value::Gauge32(d.used_mib));
        col(5, Value::Gauge32(d.used));
    }
    for a in &view.alarms {
        for (c, v) in alarm_columns(a) {
            m.insert(oid(&OBJECTS, &[5, 1, c, a.index]), v);
        }
    }
    m
}

/// lbAlarmEntry's columns: a row of lbAlarmTable, and what every
/// notification carries.
fn alarm_columns(a: &SnmpAlarm) -> [(u32, Value); 7] {
    [
        (2, date_and_time(Some(a.at))),
        (3, Value::Integer(a.severity)),
        (4, text(a.event, 255)),
        (5, text(&a.kind, 255)),
        (6, text(&a.object_id, 255)),
        (7, text(&a.object_name, 255)),
        (8, text(&a.message, 255)),
    ]
}

/// Whether `o` names an instance of an object the MIB defines (a scalar
/// or a table column), as opposed to something this agent has no object
/// for: the difference between noSuchInstance and noSuchObject.
fn is_defined_object(o: &Oid) -> bool {
    let arcs = o.arcs();
    let under = |prefix: &[u32]| arcs.strip_prefix(prefix);
    if let Some(rest) = under(&SYSTEM) {
        return matches!(rest.first(), Some(1..=7));
    }
    let Some(rest) = under(&OBJECTS) else {
        return false;
    };
    match rest {
        [1, arc, ..] => (1..=7).contains(arc),
        [2, 1, col, ..] => (2..=8).contains(col),
        [3, 1, col, ..] => (2..=10).contains(col),
        [4, 1, col, ..] => (2..=5).contains(col),
        [5, 1, col, ..] => (2..=8).contains(col),
        _ => false,
    }
}

/// One registered subtree of the shared MIB.
struct Subtree(Arc<Mib>, Oid);

impl MibHandler for Subtree {
    fn get<'a>(
        &'a self,
        ctx: &'a RequestContext,
        oid: &'a Oid,
    ) -> BoxFuture<'a, HandlerResult<GetResult>> {
        Box::pin(async move {
            let view = Mib::view(&self.0, ctx).await?;
            Ok(match view.get(oid) {
                Some(v) => GetResult::Value(v.clone()),
                None if is_defined_object(oid) => GetResult::NoSuchInstance,
                None => GetResult::NoSuchObject,
            })
        })
    }

    fn get_next<'a>(
        &'a self,
        ctx: &'a RequestContext,
        oid: &'a Oid,
    ) -> BoxFuture<'a, HandlerResult<GetNextResult>> {
        Box::pin(async move {
            let view = Mib::view(&self.0, ctx).await?;
            let next = view
                .range((std::ops::Bound::Excluded(oid), std::ops::Bound::Unbounded))
                .find(|_| true)
                .filter(|(o, _)| o.starts_with(&self.1));
            Ok(match next {
                Some((o, v)) => GetNextResult::Value(VarBind::new(o.clone(), v.clone())),
                None => GetNextResult::EndOfMibView,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defined_objects_are_told_from_unknown_ones() {
        assert!(is_defined_object(&oid(&SYSTEM, &[5, 0])));
        assert!(is_defined_object(&oid(&OBJECTS, &[3, 1, 2, 99])));
        assert!(!is_defined_object(&oid(&OBJECTS, &[3, 1, 11, 1])));
        assert!(!is_defined_object(&oid(&OBJECTS, &[9])));
        assert!(is_defined_object(&oid(&OBJECTS, &[5, 1, 8, 7])));
        assert!(!is_defined_object(&oid(&OBJECTS, &[5, 1, 1, 7])));
        assert!(!is_defined_object(&oid(&LIFEBOAT, &[2, 1])));
        assert!(!is_defined_object(&oid(&[1, 3, 6, 1, 2, 1, 2], &[1, 0])));
    }

    #[test]
    fn date_and_time_is_eleven_octets_in_utc() {
        // 2026-12-02 10:20:30 UTC
        let Value::OctetString(b) = date_and_time(Some(1_796_206_830)) else {
            panic!("not an octet string");
        };
        assert_eq!(&b[..], &[0x07, 0xea, 12, 2, 10, 20, 30, 0, b'+', 0, 0]);
        let Value::OctetString(epoch) = date_and_time(None) else {
            panic!("not an octet string");
        };
        assert_eq!(&epoch[..2], &[0x07, 0xb2]);
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let Value::OctetString(b) = text("ééé", 5) else {
            panic!("not an octet string");
        };
        assert_eq!(&b[..], "éé".as_bytes());
    }
}
