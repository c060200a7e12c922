//! TLS material: the certificate chain and key both listeners may serve
//! (rustls), read from PEM files named in `[tls]`, checked at start (a bad
//! file is a configuration error, exit 64) and swapped whole on reload, so
//! a renewed certificate is served from the next handshake without a
//! restart. Also the demo's certificate authority (rcgen) and the trust
//! roots of the CLI's client.

use arc_swap::ArcSwap;
use prometheus::{IntGauge, Registry};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// What `[tls]` says, with the material it names loaded and checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Serve HTTPS on the public listener.
    pub public: bool,
    /// Serve HTTPS on the admin listener.
    pub admin: bool,
    pub material: Arc<Material>,
}

/// A loaded certificate chain and key.
#[derive(Debug)]
pub struct Material {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// Reads and checks a PEM certificate chain (leaf first) and its key.
pub fn load(cert: &Path, key: &Path) -> Result<Material, TlsError> {
    let bad = |path: &Path, why: String| TlsError::File { path: path.to_owned(), why };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| bad(cert, "no certificate in the file".into()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(cert, format!("not an X.509 certificate: {e}")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let signing = any_supported_type(&der).map_err(|e| bad(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| bad(key, format!("does not match {}: {e}", cert.display())))?;
    Ok(Material { key: Arc::new(certified), not_after })
}

/// The certificate being served, swapped whole on reload.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    expiry: IntGauge,
}

impl Certificates {
    pub fn new(material: &Material, registry: &Registry) -> prometheus::Result<Arc<Certificates>> {
        let expiry = IntGauge::new(
            "healthgate_tls_cert_expiry_timestamp_seconds",
            "When the certificate served over TLS expires (notAfter, Unix seconds).",
        )?;
        registry.register(Box::new(expiry.clone()))?;
        expiry.set(material.not_after);
        Ok(Arc::new(Certificates { current: ArcSwap::new(material.key.clone()), expiry }))
    }

    /// Serves `material` from the next handshake on.
    pub fn replace(&self, material: &Material) {
        self.current.store(material.key.clone());
        self.expiry.set(material.not_after);
    }

    /// A rustls server configuration that always serves the current
    /// certificate (HTTP/1.1 only).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Trust roots for a client: the system's are not used; the operator names
/// the CA that signed the gateway's certificate (the demo writes one).
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let bad = |why: String| TlsError::File { path: ca.to_owned(), why };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A private CA and a certificate it signs for `names` (DNS names or IP
/// addresses), valid from now for `days`: PEM of the CA certificate, the
/// server certificate and the server key. For the demo and the tests.
pub fn generate(names: &[&str], now: i64, days: i64) -> Result<(String, String, String), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let validity = |p: &mut CertificateParams| -> Result<(), TlsError> {
        let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| TlsError::Generate(e.to_string()));
        p.not_before = at(now - 3600)?;
        p.not_after = at(now + days * 86_400)?;
        Ok(())
    };
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "healthgate demo CA");
    validity(&mut ca)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("healthgate"));
    validity(&mut leaf)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}
