//! The agent's identity in its state dir: its private key (mode 0600), the
//! certificate the controller issued, the controller CA and the host id.
//! Written once at enrollment, atomically, so a crash never leaves half of it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Identity {
    pub host_id: String,
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

const FILES: [&str; 4] = ["agent.key", "agent.pem", "ca.pem", "host-id"];

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

pub fn is_enrolled(dir: &Path) -> bool {
    FILES.iter().all(|f| path(dir, f).exists())
}

pub fn load(dir: &Path) -> anyhow::Result<Identity> {
    let read = |name: &str| {
        fs::read(path(dir, name))
            .with_context(|| format!("cannot read {}", path(dir, name).display()))
    };
    let host_id = String::from_utf8(read("host-id")?)
        .context("host-id is not text")?
        .trim()
        .to_string();
    if host_id.is_empty() {
        bail!("host-id in {} is empty", dir.display());
    }
    Ok(Identity {
        host_id,
        ca: CertificateDer::from_pem_slice(&read("ca.pem")?)
            .context("ca.pem is not a PEM certificate")?,
        cert: CertificateDer::from_pem_slice(&read("agent.pem")?)
            .context("agent.pem is not a PEM certificate")?,
        key: PrivateKeyDer::from_pem_slice(&read("agent.key")?)
            .context("agent.key is not a PEM private key")?,
    })
}

fn write_file(dir: &Path, name: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
    let target = path(dir, name);
    lifeboat_os::durable::AtomicWrite::new(mode)
        .write(&target, contents.as_bytes())
        .with_context(|| format!("cannot write {}", target.display()))
}

/// Saves a new identity; `host-id` is written last and marks it complete.
pub fn save(
    dir: &Path,
    host_id: &str,
    key_pem: &str,
    cert_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    write_file(dir, "agent.key", key_pem, 0o600)?;
    write_file(dir, "agent.pem", cert_pem, 0o644)?;
    write_file(dir, "ca.pem", ca_pem, 0o644)?;
    write_file(dir, "host-id", host_id, 0o644)
}
