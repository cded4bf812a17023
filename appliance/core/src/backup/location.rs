//! A datastore's configuration: where its data lives ([`Location`]) and the
//! checks that turn an API request ([`DatastoreInput`]) into one — a local
//! path canonical and under an allowed root, a share whose real `mount`
//! command line builds, an SMB password sealed before it is kept.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mount::{self, SmbLogin};
use super::{Datastores, DatastoresError, MOUNT_DIR};

/// Stands in for the server's address when a new datastore is checked.
const UNRESOLVED: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Where a datastore's data lives: the stored configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Location {
    Local {
        path: PathBuf,
    },
    Nfs {
        server: String,
        export: String,
        options: String,
    },
    Smb {
        server: String,
        share: String,
        username: String,
        password: SealedPassword,
        domain: String,
        options: String,
    },
}

impl Location {
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local { .. } => "local",
            Location::Nfs { .. } => "nfs",
            Location::Smb { .. } => "smb",
        }
    }

    pub(super) fn is_share(&self) -> bool {
        !matches!(self, Location::Local { .. })
    }
}

/// An SMB password sealed by [`Secrets`]; prints as asterisks.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedPassword(pub(super) String);

impl std::fmt::Debug for SealedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedPassword(********)")
    }
}

/// A request to add a datastore, as an API client sends it; checked by
/// [`Datastores::add`]. Which fields apply depends on `kind`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatastoreInput {
    pub name: String,
    pub kind: String,
    pub path: Option<String>,
    pub server: Option<String>,
    pub export: Option<String>,
    pub share: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub domain: Option<String>,
    pub options: Option<String>,
}

impl std::fmt::Debug for DatastoreInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreInput")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Datastores {
    /// Turns a request into a configuration, or says clearly what is wrong.
    /// Shares are checked by building their real `mount` command line.
    pub(super) fn check(&self, input: DatastoreInput) -> Result<Location, DatastoresError> {
        let bad = |m: String| DatastoresError::Invalid(m);
        let name = &input.name;
        let name_ok = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(bad(format!(
                "datastore name {name:?} must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
            )));
        }
        let kind = input.kind.as_str();
        let applies: &[&str] = match kind {
            "local" => &["path"],
            "nfs" => &["server", "export", "options"],
            "smb" => &[
                "server", "share", "username", "password", "domain", "options",
            ],
            other => {
                return Err(bad(format!(
                    "unknown datastore kind {other:?}; expected local, nfs or smb"
                )))
            }
        };
        let fields = [
            ("path", &input.path),
            ("server", &input.server),
            ("export", &input.export),
            ("share", &input.share),
            ("username", &input.username),
            ("password", &input.password),
            ("domain", &input.domain),
            ("options", &input.options),
        ];
        if let Some((field, _)) = fields
            .iter()
            .find(|(f, v)| v.is_some() && !applies.contains(f))
        {
            return Err(bad(format!("{field}: does not apply to kind {kind}")));
        }
        let need = |field: &str, v: &Option<String>| {
            v.clone()
                .ok_or_else(|| bad(format!("{field}: kind {kind} needs it")))
        };
        let options = input.options.clone().unwrap_or_default();
        Ok(match kind {
            "local" => Location::Local {
                path: self.resolve_local(&need("path", &input.path)?)?,
            },
            "nfs" => {
                let (server, export) = (
                    need("server", &input.server)?,
                    need("export", &input.export)?,
                );
                // Checked now; the name is resolved when it is mounted.
                mount::nfs_request(&server, UNRESOLVED, &export, &options)?;
                Location::Nfs {
                    server,
                    export,
                    options,
                }
            }
            _ => {
                let (server, share) =
                    (need("server", &input.server)?, need("share", &input.share)?);
                let username = need("username", &input.username)?;
                let clear = input.password.clone().unwrap_or_default();
                let domain = input.domain.clone().unwrap_or_default();
                let login = SmbLogin {
                    username: &username,
                    password: &clear,
                    domain: &domain,
                };
                mount::cifs_request(&server, UNRESOLVED, &share, &login, &options)?;
                let password = SealedPassword(self.secrets()?.seal(&clear)?);
                Location::Smb {
                    server,
                    share,
                    username,
                    password,
                    domain,
                    options,
                }
            }
        })
    }

    /// The canonical directory for a local datastore, refused unless it lies
    /// strictly under an allowed root and outside the mount directory.
    fn resolve_local(&self, path: &str) -> Result<PathBuf, DatastoresError> {
        let bad = |m: String| DatastoresError::Invalid(m);
        if !Path::new(path).is_absolute() {
            return Err(bad(format!("path {path:?} must be absolute")));
        }
        let resolved = resolve(Path::new(path)).map_err(|e| bad(format!("path {path:?}: {e}")))?;
        let roots: Vec<PathBuf> = self
            .inner
            .roots
            .iter()
            .filter_map(|r| resolve(r).ok())
            .collect();
        let inside = roots
            .iter()
            .any(|r| resolved.starts_with(r) && resolved != *r);
        if !inside || resolved.starts_with(self.inner.data_dir.join(MOUNT_DIR)) {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            return Err(bad(format!(
                "path {path:?} resolves to {}, which is not under an allowed datastore root ({}); \
                 start the controller with --datastore-root to allow another",
                resolved.display(),
                list.join(", ")
            )));
        }
        Ok(resolved)
    }
}

/// `path` with every symlink and `..` resolved, also when its last
/// components do not exist yet (they are then plain names, created later).
fn resolve(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut out) => {
                out.extend(missing.iter().rev());
                return Ok(out);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if fs::symlink_metadata(&existing).is_ok() {
                    return Err(format!("{} is a dangling symlink", existing.display()));
                }
                match existing.components().next_back() {
                    Some(Component::Normal(part)) => missing.push(part.to_owned()),
                    _ => return Err("'..' below a directory that does not exist".into()),
                }
                existing.pop();
            }
            Err(e) => return Err(format!("{}: {e}", existing.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolving_follows_symlinks_and_dot_dot_even_below_missing_directories() {
        let base = std::env::temp_dir().join(format!("lifeboat-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("root/real")).unwrap();
        let base = base.canonicalize().unwrap();
        symlink("/etc", base.join("root/escape")).unwrap();
        symlink(base.join("nowhere"), base.join("root/dangling")).unwrap();
        let r = |p: &str| resolve(&base.join(p));
        assert_eq!(
            r("root/real/new/deeper").unwrap(),
            base.join("root/real/new/deeper")
        );
        assert_eq!(r("root/real/../../x").unwrap(), base.join("x"));
        assert_eq!(
            r("root/escape/lifeboat").unwrap(),
            Path::new("/etc/lifeboat")
        );
        assert!(r("root/dangling/x")
            .unwrap_err()
            .contains("dangling symlink"));
        assert!(r("root/missing/../x").unwrap_err().contains("'..'"));
    }
}
