//! The controller's private certificate authority: created on first start,
//! it signs the controller's server certificate and every agent's client
//! certificate. Agents pin it by the SHA-256 fingerprint of its DER form.
//!
//! Private keys live only in `DATA_DIR/tls/*.key`, mode 0600.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("bad PEM in {0}")]
    Pem(PathBuf),
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
}

/// Building a TLS server configuration from the CA's certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The CA plus the controller's own server certificate.
pub struct Pki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_fingerprint", &self.ca_fingerprint())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    lifeboat_os::durable::AtomicWrite::new(mode)
        .write(path, contents.as_bytes())
        .map_err(io)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Lifeboat controller CA");
    dn.push(DnType::OrganizationName, "Lifeboat");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params.serial_number = Some(rand::random::<u64>().into());
    params
}

impl Pki {
    /// Loads the CA and server certificate from `tls_dir`, creating them on
    /// first start. The server certificate names `lifeboat-controller`,
    /// `localhost`, the machine's hostname and the loopback addresses.
    pub fn load_or_create(tls_dir: &Path) -> Result<Pki, PkiError> {
        fs::create_dir_all(tls_dir).map_err(|source| PkiError::Io {
            path: tls_dir.to_owned(),
            source,
        })?;
        let ca_key_path = tls_dir.join("ca.key");
        let ca_pem_path = tls_dir.join("ca.pem");
        if !ca_key_path.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write(&ca_pem_path, &cert.pem(), 0o644)?;
        }
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
        let ca_pem = read(&ca_pem_path)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| PkiError::Pem(ca_pem_path.clone()))?;

        let mut pki = Pki {
            ca_key,
            ca_params: ca_params(),
            ca_pem,
            ca_der,
            server_chain: Vec::new(),
            server_key_pem: String::new(),
        };

        let server_key_path = tls_dir.join("server.key");
        let server_pem_path = tls_dir.join("server.pem");
        if !server_key_path.exists() {
            let key = KeyPair::generate()?;
            let hostname = lifeboat_os::host::hostname();
            let mut sans = vec![
                SanType::DnsName(lifeboat_proto::CONTROLLER_SERVER_NAME.try_into()?),
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            ];
            if let Ok(name) = hostname.clone().try_into() {
                if !hostname.is_empty() {
                    sans.push(SanType::DnsName(name));
                }
            }
            let cert = leaf_params(
                "Lifeboat controller",
                sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            )
            .signed_by(&key, &pki.issuer())?;
            write(&server_key_path, &key.serialize_pem(), 0o600)?;
            write(&server_pem_path, &cert.pem(), 0o644)?;
        }
        let server_pem = read(&server_pem_path)?;
        let server_der = CertificateDer::from_pem_slice(server_pem.as_bytes())
            .map_err(|_| PkiError::Pem(server_pem_path.clone()))?;
        pki.server_chain = vec![server_der, pki.ca_der.clone()];
        pki.server_key_pem = read(&server_key_path)?;
        Ok(pki)
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        // Written by us from a valid key; checked again by rustls on use.
        PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .expect("server key PEM we wrote")
    }

    /// `sha256//BASE64` of the console key's SubjectPublicKeyInfo, the
    /// form `curl --pinnedpubkey` checks.
    pub fn web_key_pin(&self) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let key = KeyPair::from_pem(&self.server_key_pem).expect("server key PEM we wrote");
        let digest = sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key));
        format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    /// The console's HTTPS configuration: the server certificate, no client
    /// certificates, HTTP/1.1 only.
    pub fn web_server_config(&self) -> Result<rustls::ServerConfig, TlsSetupError> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// `sha256:<hex>` of the CA certificate, what agents pin.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// Signs an agent's CSR. Only the public key is taken from the request:
    /// subject, usages and validity are ours, so an agent cannot ask for more.
    pub fn sign_agent_csr(&self, csr_pem: &str, host_id: &str) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let params = leaf_params(
            &format!("lifeboat-agent {host_id}"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Ok(params.signed_by(&csr.public_key, &self.issuer())?.pem())
    }
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// A TLS client configuration trusting `ca_pem` (the CA that signed a
/// server's certificate) or, when it is empty, the system's trust store.
/// Errors name the field: `ca_pem: …`.
pub fn client_tls(ca_pem: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_pem.trim().is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| format!("ca_pem: {e}"))?)
                .map_err(|e| format!("ca_pem: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca_pem: no certificate in it".into());
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_identically() {
        let dir = std::env::temp_dir().join(format!("lifeboat-pki-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = Pki::load_or_create(&dir).unwrap();
        let b = Pki::load_or_create(&dir).unwrap();
        assert_eq!(a.ca_fingerprint(), b.ca_fingerprint());
        assert_eq!(a.server_chain, b.server_chain);
        let mode = fs::metadata(dir.join("ca.key")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn signs_a_csr_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("lifeboat-pki-csr-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pki = Pki::load_or_create(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let pem = pki.sign_agent_csr(&csr.pem().unwrap(), "h1").unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(matches!(
            pki.sign_agent_csr("junk", "h1"),
            Err(PkiError::BadCsr(_))
        ));
    }
}
