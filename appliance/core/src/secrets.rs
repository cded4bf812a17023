//! The controller's secret box: credentials it must replay later (an SMB
//! share's password) are sealed with ChaCha20-Poly1305 under one random
//! 256-bit key in `DATA_DIR/secrets.key` (mode 0600, created on first use), so
//! a copy of the database alone reveals none of them.
//!
//! Format of a sealed secret: standard base64 of a 12-byte random nonce
//! followed by the ciphertext and its 16-byte tag; the associated data is
//! [`AAD`], so a blob cannot be replayed into a future, differently bound
//! format. The key file is the 32 raw key bytes. Losing it makes every sealed
//! secret unreadable: it belongs in the controller's own backup.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_FILE: &str = "secrets.key";
const KEY_LEN: usize = 32;
const AAD: &[u8] = b"lifeboat sealed secret v1";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a {KEY_LEN}-byte key; restore it from a backup", path.display())]
    DamagedKey { path: PathBuf },
    #[error("the system random generator failed")]
    Random,
    #[error("a sealed secret is malformed")]
    Malformed,
    // Deliberately vague: the usual cause is a replaced key file, and nothing
    // about the plaintext may leak through an error.
    #[error(
        "a sealed secret cannot be opened with this controller's key (was {KEY_FILE} replaced?)"
    )]
    WrongKey,
}

/// Holds the key; prints nothing of it.
pub struct Secrets {
    key: LessSafeKey,
    /// For per-purpose keys derived from the same secret (HMAC-SHA256 of
    /// the purpose and an id), so no second secret needs storing.
    derivation: ring::hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Secrets {
    /// Reads `dir/secrets.key`, or creates it (0600) when there is none. Two
    /// callers racing to create it end with the same key: the file appears
    /// whole and at most once (written aside, then hard-linked into place).
    pub fn load_or_create(dir: &Path) -> Result<Secrets, SecretsError> {
        let path = dir.join(KEY_FILE);
        let key = match read_key(&path)? {
            Some(key) => key,
            None => {
                create_key(&path)?;
                read_key(&path)?.ok_or_else(|| SecretsError::DamagedKey { path: path.clone() })?
            }
        };
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .map_err(|_| SecretsError::DamagedKey { path })?;
        Ok(Secrets {
            key: LessSafeKey::new(unbound),
            derivation: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            rng: SystemRandom::new(),
        })
    }

    /// A 32-byte key for `purpose` and `id` (a host's storage heartbeat
    /// key, say): the same for as long as the secret key lasts, different
    /// for every purpose and id, and telling nothing of the secret key.
    pub fn derive(&self, purpose: &str, id: &str) -> [u8; 32] {
        let mut input = Vec::with_capacity(purpose.len() + 1 + id.len());
        input.extend_from_slice(purpose.as_bytes());
        input.push(0);
        input.extend_from_slice(id.as_bytes());
        let tag = ring::hmac::sign(&self.derivation, &input);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Seals `plaintext` under a fresh random nonce.
    pub fn seal(&self, plaintext: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(blob))
    }

    /// Opens what [`Secrets::seal`] produced; a changed byte or another key
    /// is an error, never garbage.
    pub fn open(&self, sealed: &str) -> Result<String, SecretsError> {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SecretsError::Malformed)?;
        if blob.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SecretsError::Malformed);
        }
        let (nonce, rest) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Malformed)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut buf)
            .map_err(|_| SecretsError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Malformed)
    }
}

/// The key, or `None` when the file does not exist. A key file others can
/// read is tightened to 0600 with a warning rather than refused: refusing
/// would only stop the controller, not undo the exposure.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_LEN]>, SecretsError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let mode = file.metadata().map_err(io_at(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by others (mode {:o}); setting it to 0600",
            path.display(),
            mode & 0o777
        );
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_at(path))?;
    }
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    Read::by_ref(&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SecretsError::DamagedKey {
        path: path.to_path_buf(),
    })?;
    Ok(Some(key))
}

fn create_key(path: &Path) -> Result<(), SecretsError> {
    let rng = SystemRandom::new();
    let mut key = [0u8; KEY_LEN];
    rng.fill(&mut key).map_err(|_| SecretsError::Random)?;
    // Never replacing an existing key: whoever writes first wins and
    // everyone then reads the winner's key.
    let written = lifeboat_os::durable::AtomicWrite::new(0o600)
        .no_replace()
        .write(path, &key);
    key.fill(0);
    match written {
        Ok(()) => {
            tracing::info!("created the secrets key {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lifeboat-secrets-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sealed_secrets_round_trip_and_hide_the_plaintext() {
        let dir = temp_dir("round-trip");
        let secrets = Secrets::load_or_create(&dir).unwrap();
        let sealed = secrets.seal("pä$$, word\n").unwrap();
        assert!(!sealed.contains("word"));
        assert_eq!(secrets.open(&sealed).unwrap(), "pä$$, word\n");
        // A fresh nonce each time: the same password never seals the same.
        assert_ne!(secrets.seal("x").unwrap(), secrets.seal("x").unwrap());
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{secrets:?}"), "Secrets(..)");
    }

    #[test]
    fn the_key_survives_reloading_and_a_new_key_cannot_open() {
        let dir = temp_dir("reload");
        let sealed = Secrets::load_or_create(&dir)
            .unwrap()
            .seal("s3cret")
            .unwrap();
        let again = Secrets::load_or_create(&dir).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "s3cret");
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let other = Secrets::load_or_create(&dir).unwrap();
        let err = other.open(&sealed).unwrap_err();
        assert!(matches!(err, SecretsError::WrongKey), "{err}");
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn tampering_and_junk_are_errors() {
        let dir = temp_dir("tamper");
        let secrets = Secrets::load_or_create(&dir).unwrap();
        let sealed = secrets.seal("s3cret").unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let flipped = base64::engine::general_purpose::STANDARD.encode(blob);
        assert!(matches!(
            secrets.open(&flipped),
            Err(SecretsError::WrongKey)
        ));
        assert!(matches!(
            secrets.open("not base64!"),
            Err(SecretsError::Malformed)
        ));
        assert!(matches!(secrets.open("AAAA"), Err(SecretsError::Malformed)));
    }

    #[test]
    fn a_damaged_key_file_is_refused_and_a_loose_one_tightened() {
        let dir = temp_dir("damaged");
        fs::write(dir.join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Secrets::load_or_create(&dir),
            Err(SecretsError::DamagedKey { .. })
        ));
        let path = dir.join(KEY_FILE);
        fs::write(&path, [7u8; KEY_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Secrets::load_or_create(&dir).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
