//! Where the load goes: a demo's `env.json` (written by `healthgate demo`)
//! or explicit settings for a real deployment, and the HTTP endpoint a URL
//! names, over TLS when the URL says `https` (trusting only the CA file
//! named, as the gateway's own CLI does).

use ed25519_dalek::SigningKey;
use healthgate_core::keyfile::{parse_secret, KeyFileError};
use healthgate_core::population::Population;
use healthgate_core::token::KeyId;
use hyper::header::HeaderValue;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tokio_rustls::TlsConnector;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a healthgate env.json: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: KeyFileError },
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("{path}: not a usable CA file: {why}")]
    Ca { path: PathBuf, why: String },
}

/// The parts of `env.json` the load generator uses; the rest is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Env {
    pub public_url: String,
    pub admin_url: String,
    pub api_keys: ApiKeys,
    /// Paths are relative to the env.json's folder unless absolute.
    pub issuer_key: PathBuf,
    #[serde(default)]
    pub untrusted_key: Option<PathBuf>,
    /// The CA that signed the gateway's certificate (`healthgate demo --tls`).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Checkpoint ids by class (`metro`, `rail`, ...).
    #[serde(default)]
    pub checkpoints: BTreeMap<String, Vec<String>>,
    pub population: Population,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeys {
    /// For `POST /v1/scan`.
    pub turnstile: String,
    /// For `GET /v1/holders/{id}`.
    pub inspector: String,
}

impl Env {
    pub fn load(path: &Path) -> Result<Env, TargetError> {
        let bytes = std::fs::read(path).map_err(|source| TargetError::Io { path: path.to_owned(), source })?;
        let mut env: Env =
            serde_json::from_slice(&bytes).map_err(|source| TargetError::Json { path: path.to_owned(), source })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        env.issuer_key = dir.join(&env.issuer_key);
        env.untrusted_key = env.untrusted_key.map(|k| dir.join(k));
        env.ca_cert = env.ca_cert.map(|c| dir.join(c));
        Ok(env)
    }
}

pub fn load_key(path: &Path) -> Result<(KeyId, SigningKey), TargetError> {
    let bytes = std::fs::read(path).map_err(|source| TargetError::Io { path: path.to_owned(), source })?;
    parse_secret(&bytes).map_err(|source| TargetError::Key { path: path.to_owned(), source })
}

/// An HTTP/1.1 origin: where to connect, what to put in `Host`, and the
/// TLS to speak first for an `https` URL.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// Prefix of every path, without a trailing slash (usually empty).
    pub base_path: String,
    pub tls: Option<Tls>,
}

/// The client side of TLS for one origin: the connector (trust roots from
/// the CA file) and the name the certificate must carry.
#[derive(Clone)]
pub struct Tls {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("base_path", &self.base_path)
            .field("tls", &self.tls.as_ref().map(|t| &t.name))
            .finish()
    }
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]` and resolves the host once;
    /// `ca` is the PEM file of the CA to trust, required for `https` (no
    /// system roots: a gateway's certificate comes from its operator).
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Endpoint, TargetError> {
        let err = |why: &str| TargetError::Url(url.to_owned(), why.to_owned());
        let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| err(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(err("the scheme must be http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| err("no host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .map_err(|e| err(&e.to_string()))?
            .next()
            .ok_or_else(|| err("host resolves to no address"))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| err(&e.to_string()))?;
        let tls = match (https, ca) {
            (false, _) => None,
            (true, None) => return Err(err("an https URL needs the CA that signed its certificate (--ca)")),
            (true, Some(ca)) => {
                let name = authority.host().trim_matches(['[', ']']).to_owned();
                let name = ServerName::try_from(name).map_err(|e| err(&e.to_string()))?;
                Some(Tls { connector: TlsConnector::from(Arc::new(client_config(ca)?)), name })
            }
        };
        Ok(Endpoint { addr, host, base_path: uri.path().trim_end_matches('/').to_owned(), tls })
    }
}

/// A rustls client trusting the certificates of one PEM file.
fn client_config(ca: &Path) -> Result<rustls::ClientConfig, TargetError> {
    let bad = |why: String| TargetError::Ca { path: ca.to_owned(), why };
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
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_paths_are_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("hg-loadgen-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("env.json");
        std::fs::write(
            &path,
            r#"{"public_url":"http://127.0.0.1:8080","admin_url":"http://127.0.0.1:9090",
               "api_keys":{"turnstile":"t","inspector":"i","authority":"a","operator":"o"},
               "issuer_key":"keys/issuer.key","untrusted_key":"/abs/u.key","trust":"trust.toml","ca_cert":"tls/ca.pem",
               "checkpoints":{"metro":["m1","m2"],"rail":[]},"holders":{"green":["00"]},
               "population":{"seed":1,"size":100000,"mix":{"green":0.95,"yellow":0.03,"red":0.01,"pending":0.01}}}"#,
        )
        .unwrap();
        let env = Env::load(&path).unwrap();
        assert_eq!(env.issuer_key, dir.join("keys/issuer.key"));
        assert_eq!(env.untrusted_key.unwrap(), PathBuf::from("/abs/u.key"));
        assert_eq!(env.ca_cert.unwrap(), dir.join("tls/ca.pem"));
        assert_eq!(env.checkpoints["metro"], ["m1", "m2"]);
        assert_eq!(env.population.size, 100_000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.host, "127.0.0.1:8080");
        assert_eq!(e.base_path, "");
        assert!(e.tls.is_none());
        assert_eq!(Endpoint::parse("http://127.0.0.1:81/gw/", None).unwrap().base_path, "/gw");
        // https without a CA to trust is refused, not silently unchecked.
        assert!(Endpoint::parse("https://127.0.0.1", None).is_err());
        assert!(Endpoint::parse("ftp://127.0.0.1", None).is_err());
        assert!(Endpoint::parse("nonsense", None).is_err());
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(Endpoint::parse("https://127.0.0.1", Some(missing)), Err(TargetError::Ca { .. })));
    }
}
