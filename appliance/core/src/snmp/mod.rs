//! The SNMP agent's settings and state: v2c communities bound to source
//! networks, v3 USM users, each acting as a Lifeboat user (whose role and
//! access policies decide what it sees); the local engine's ID and boot
//! count (RFC 3414: the count must grow across restarts); and the stable
//! table indices LIFEBOAT-MIB promises.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, Table, Write};

const SETTINGS_KEY: &str = "settings";
const ENGINE_KEY: &str = "engine";
/// The placeholder enterprise number (RFC 5612's, for documentation) that
/// LIFEBOAT-MIB and the engine ID use until Lifeboat has its own.
pub const ENTERPRISE: u32 = 32473;
/// The standard SNMP port, which the appliance listens on.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:161";
const MAX_ENTRIES: usize = 32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthProtocol {
    Sha1,
    #[default]
    Sha256,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivProtocol {
    #[default]
    Aes128,
}

/// The settings as an operator gives them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnmpInput {
    #[serde(default)]
    pub enabled: bool,
    /// `ADDRESS:PORT` to listen on (UDP); default `0.0.0.0:161`.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub communities: Vec<CommunityInput>,
    #[serde(default)]
    pub users: Vec<UsmUserInput>,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunityInput {
    /// The community string (a shared secret sent in clear); empty with
    /// `stored` keeps that stored community's string.
    #[serde(default)]
    pub community: String,
    /// The position of a stored community (as `GET /snmp` lists them)
    /// whose string an empty `community` keeps.
    #[serde(default)]
    pub stored: Option<usize>,
    /// Source networks allowed to use it, e.g. `192.0.2.0/24`, `::1/128`.
    pub networks: Vec<String>,
    /// The Lifeboat user whose view it gets.
    pub user: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsmUserInput {
    pub name: String,
    #[serde(default)]
    pub auth: AuthProtocol,
    /// Empty keeps the stored one of the user with this name.
    #[serde(default)]
    pub auth_password: String,
    #[serde(default)]
    pub privacy: PrivProtocol,
    /// Empty keeps the stored one.
    #[serde(default)]
    pub priv_password: String,
    /// The Lifeboat user whose view it gets.
    pub user: String,
}

/// The settings as stored: secrets sealed with the controller's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnmpSettings {
    pub enabled: bool,
    pub listen: String,
    pub communities: Vec<StoredCommunity>,
    pub users: Vec<StoredUsmUser>,
}

impl Default for SnmpSettings {
    fn default() -> SnmpSettings {
        SnmpSettings {
            enabled: false,
            listen: DEFAULT_LISTEN.into(),
            communities: Vec::new(),
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCommunity {
    pub community_sealed: String,
    pub networks: Vec<String>,
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUsmUser {
    pub name: String,
    pub auth: AuthProtocol,
    pub auth_sealed: String,
    pub privacy: PrivProtocol,
    pub priv_sealed: String,
    pub user: String,
}

/// Parses a source network: `ADDRESS/PREFIX`, or one address.
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("networks: {s:?} is not ADDRESS/PREFIX or an address"))
}

fn check_secret(field: &str, value: &str, min: usize) -> Result<(), String> {
    if value.len() < min || value.len() > 64 {
        return Err(format!("{field}: {min} to 64 characters"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("{field}: no control characters"));
    }
    Ok(())
}

impl SnmpInput {
    /// Checks everything but the secrets a user keeps and whether the
    /// named Lifeboat users exist; errors start with the field's name.
    pub fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("listen: {:?} is not ADDRESS:PORT", self.listen))?;
        if self.communities.len() > MAX_ENTRIES || self.users.len() > MAX_ENTRIES {
            return Err(format!(
                "communities: at most {MAX_ENTRIES} communities and {MAX_ENTRIES} users"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.communities {
            // A kept one is checked against the stored list by the caller.
            let kept = c.community.is_empty() && c.stored.is_some();
            if !kept {
                check_secret("community", &c.community, 1)?;
                if !seen.insert(c.community.as_str()) {
                    return Err("community: each community once".into());
                }
            }
            if c.networks.is_empty() {
                return Err("networks: each community needs at least one source network".into());
            }
            for n in &c.networks {
                parse_network(n)?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty()
                || u.name.len() > 32
                || !u
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err("name: 1 to 32 letters, digits, '-', '_' or '.'".into());
            }
            if !names.insert(u.name.as_str()) {
                return Err(format!("name: user {:?} is given twice", u.name));
            }
            // RFC 3414 11.2: at least 8 characters.
            for (field, value) in [
                ("auth_password", &u.auth_password),
                ("priv_password", &u.priv_password),
            ] {
                if !value.is_empty() {
                    check_secret(field, value, 8)?;
                }
            }
        }
        Ok(())
    }
}

/// The local SNMP engine as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineState {
    /// Hex of the engine ID.
    pub engine_id: String,
    pub boots: u32,
}

impl EngineState {
    /// A new engine ID in the RFC 3411 form: enterprise number with the
    /// top bit set, format 5 (octets), then eight random octets.
    fn new() -> EngineState {
        let mut id = (ENTERPRISE | 0x8000_0000).to_be_bytes().to_vec();
        id.push(5);
        id.extend(rand::random::<[u8; 8]>());
        EngineState {
            engine_id: hex::encode(id),
            boots: 0,
        }
    }
}

/// Which table an index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    Host,
    Vm,
    Datastore,
}

impl IndexKind {
    fn prefix(self) -> &'static str {
        match self {
            IndexKind::Host => "index/host/",
            IndexKind::Vm => "index/vm/",
            IndexKind::Datastore => "index/datastore/",
        }
    }
}

#[derive(Default)]
struct Indices {
    by_key: HashMap<(IndexKind, String), u32>,
    next: HashMap<IndexKind, u32>,
}

pub struct Snmp {
    store: Store,
    settings: Mutex<SnmpSettings>,
    engine: Mutex<EngineState>,
    indices: Mutex<Indices>,
    /// Told when the settings change.
    pub(crate) changed: tokio::sync::Notify,
}

impl Snmp {
    pub fn load(store: Store) -> Result<Snmp, StoreError> {
        let mut settings = SnmpSettings::default();
        let mut indices = Indices::default();
        let mut engine = None;
        for (key, value) in store.load::<serde_json::Value>(Table::Snmp)? {
            let corrupt = |source| StoreError::Corrupt {
                table: Table::Snmp,
                key: key.clone(),
                source,
            };
            if key == SETTINGS_KEY {
                settings = serde_json::from_value(value).map_err(corrupt)?;
                continue;
            }
            if key == ENGINE_KEY {
                engine = Some(serde_json::from_value(value).map_err(corrupt)?);
                continue;
            }
            for kind in [IndexKind::Host, IndexKind::Vm, IndexKind::Datastore] {
                if let Some(id) = key.strip_prefix(kind.prefix()) {
                    let index: u32 = serde_json::from_value(value.clone()).map_err(corrupt)?;
                    let next = indices.next.entry(kind).or_insert(1);
                    *next = (*next).max(index.saturating_add(1));
                    indices.by_key.insert((kind, id.to_string()), index);
                }
            }
        }
        let engine = match engine {
            Some(engine) => engine,
            None => {
                // Made and stored once, so the ID the settings show (what a
                // receiver of v3 traps is configured with) is the one used.
                let engine = EngineState::new();
                store.commit_blocking(vec![Write::put(Table::Snmp, ENGINE_KEY, &engine)])?;
                engine
            }
        };
        Ok(Snmp {
            store,
            engine: Mutex::new(engine),
            settings: Mutex::new(settings),
            indices: Mutex::new(indices),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn settings(&self) -> SnmpSettings {
        self.settings.lock().expect("snmp lock").clone()
    }

    pub async fn set_settings(&self, settings: SnmpSettings) -> Result<(), StoreError> {
        self.store
            .commit(vec![Write::put(Table::Snmp, SETTINGS_KEY, &settings)])
            .await?;
        *self.settings.lock().expect("snmp lock") = settings;
        self.changed.notify_waiters();
        Ok(())
    }

    /// The local engine as stored (boot count 0 before its first start).
    pub fn engine(&self) -> EngineState {
        self.engine.lock().expect("snmp lock").clone()
    }

    /// Stores a boot count the engine moved to. Blocking: inside the
    /// runtime, call it in `tokio::task::block_in_place`.
    pub fn save_engine(&self, engine: &EngineState) -> Result<(), StoreError> {
        self.store
            .commit_blocking(vec![Write::put(Table::Snmp, ENGINE_KEY, engine)])?;
        *self.engine.lock().expect("snmp lock") = engine.clone();
        Ok(())
    }

    /// The index of each `(kind, id)`, assigning (and storing) new ones;
    /// an index once given is never given to another object.
    pub async fn indices(&self, wanted: &[(IndexKind, String)]) -> Result<Vec<u32>, StoreError> {
        let (found, writes, fresh) = {
            let mut ix = self.indices.lock().expect("snmp lock");
            let mut writes = Vec::new();
            let mut fresh = Vec::new();
            let found: Vec<u32> = wanted
                .iter()
                .map(|(kind, id)| {
                    if let Some(&i) = ix.by_key.get(&(*kind, id.clone())) {
                        return i;
                    }
                    let next = ix.next.entry(*kind).or_insert(1);
                    let i = *next;
                    *next += 1;
                    ix.by_key.insert((*kind, id.clone()), i);
                    writes.push(Write::put(
                        Table::Snmp,
                        format!("{}{id}", kind.prefix()),
                        &i,
                    ));
                    fresh.push((*kind, id.clone()));
                    i
                })
                .collect();
            (found, writes, fresh)
        };
        if !writes.is_empty() {
            if let Err(e) = self.store.commit(writes).await {
                // Not stored: forget them, so a later call stores them.
                let mut ix = self.indices.lock().expect("snmp lock");
                for key in fresh {
                    ix.by_key.remove(&key);
                }
                return Err(e);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn community(c: &str, networks: &[&str]) -> CommunityInput {
        CommunityInput {
            community: c.into(),
            stored: None,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            user: "monitor".into(),
        }
    }

    #[test]
    fn communities_need_networks_and_users_need_long_passwords() {
        let ok = SnmpInput {
            enabled: true,
            listen: "127.0.0.1:1161".into(),
            communities: vec![community("public", &["10.0.0.0/8", "::1"])],
            users: vec![],
        };
        assert!(ok.validate().is_ok());
        for (input, field) in [
            (
                SnmpInput {
                    listen: "nowhere".into(),
                    ..ok.clone()
                },
                "listen:",
            ),
            (
                SnmpInput {
                    communities: vec![community("public", &[])],
                    ..ok.clone()
                },
                "networks:",
            ),
            (
                SnmpInput {
                    communities: vec![community("public", &["10.0.0.0/33"])],
                    ..ok.clone()
                },
                "networks:",
            ),
            (
                SnmpInput {
                    communities: vec![community("", &["::1"])],
                    ..ok.clone()
                },
                "community:",
            ),
            (
                SnmpInput {
                    users: vec![UsmUserInput {
                        name: "ops".into(),
                        auth_password: "short".into(),
                        user: "monitor".into(),
                        ..Default::default()
                    }],
                    ..ok.clone()
                },
                "auth_password:",
            ),
            (
                SnmpInput {
                    users: vec![UsmUserInput {
                        name: "bad name".into(),
                        user: "monitor".into(),
                        ..Default::default()
                    }],
                    ..ok.clone()
                },
                "name:",
            ),
        ] {
            let err = input.validate().unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
        assert_eq!(
            parse_network("192.0.2.7/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn an_engine_id_names_the_enterprise_then_eight_random_octets() {
        let e = EngineState::new();
        let id = hex::decode(&e.engine_id).unwrap();
        assert_eq!(id.len(), 13);
        assert_eq!(&id[..5], &[0x80, 0x00, 0x7e, 0xd9, 5]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn indices_are_stable_across_restarts_and_never_reused() {
        let dir = std::env::temp_dir().join(format!("lb-snmp-ix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.redb");
        // Loading stores a new engine: a blocking commit.
        let load = || tokio::task::block_in_place(|| Snmp::load(Store::open(&path).unwrap()));
        let first_id;
        {
            let snmp = load().unwrap();
            let got = snmp
                .indices(&[
                    (IndexKind::Vm, "a".into()),
                    (IndexKind::Vm, "b".into()),
                    (IndexKind::Host, "h".into()),
                ])
                .await
                .unwrap();
            assert_eq!(got, [1, 2, 1]);
            let mut engine = snmp.engine();
            assert_eq!(engine.boots, 0);
            first_id = engine.engine_id.clone();
            engine.boots = 7;
            tokio::task::block_in_place(|| snmp.save_engine(&engine)).unwrap();
        }
        let snmp = load().unwrap();
        let got = snmp
            .indices(&[(IndexKind::Vm, "c".into()), (IndexKind::Vm, "a".into())])
            .await
            .unwrap();
        assert_eq!(got, [3, 1]);
        assert_eq!(snmp.engine().boots, 7);
        assert_eq!(snmp.engine().engine_id, first_id, "made once");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
