//! What the controller hands out to anyone who asks: the static agent, so a
//! host needs nothing installed beforehand. Public by design (the agent is
//! no secret; enrolling needs a one-time token and the CA fingerprint), and
//! pinned both ways: the command the console shows checks the console's
//! key and the binary's SHA-256 before running it.

use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::Ops;

/// The agent binary, read once at start: every download shares one buffer.
pub struct AgentDownload {
    bytes: Bytes,
    sha256: String,
}

impl AgentDownload {
    pub fn load(path: &Path) -> std::io::Result<AgentDownload> {
        let bytes = Bytes::from(std::fs::read(path)?);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(AgentDownload { bytes, sha256 })
    }

    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Ops {
    /// The agent offered at `/downloads/lifeboat-agent`, if configured.
    pub fn agent_download(&self) -> Option<&AgentDownload> {
        self.agent_download.as_ref()
    }

    /// `sha256//BASE64` of the console's public key, as `curl
    /// --pinnedpubkey` takes it: the download command trusts this key, not
    /// a certificate name (operators reach the appliance by any address).
    pub fn web_key_pin(&self) -> String {
        self.pki.web_key_pin()
    }
}
