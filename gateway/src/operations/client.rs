//! A small HTTP/1.1 client for the CLI's authority commands (`push`,
//! `revoke`): JSON in, JSON out, bearer key, bounded time; HTTPS when the
//! URL says so, trusting the CA file the operator names (`--ca`).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0} is HTTPS: name the CA that signed its certificate (--ca)")]
    NoCa(String),
    #[error("{0}")]
    Tls(#[from] crate::operations::tls::TlsError),
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// A client of one base URL with one API key.
pub struct ApiClient {
    base: String,
    api_key: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    /// `ca`: PEM trust roots for an `https://` base (the system's are not
    /// used: a gateway's certificate comes from the operator's own CA).
    pub fn new(base: &str, api_key: &str, ca: Option<&Path>) -> Result<ApiClient, ClientError> {
        let https = base.starts_with("https://");
        if !https && !base.starts_with("http://") {
            return Err(ClientError::Url(base.to_owned()));
        }
        let tls = match (https, ca) {
            (true, None) => return Err(ClientError::NoCa(base.to_owned())),
            (_, Some(ca)) => crate::operations::tls::client_config(ca)?,
            // Plain HTTP: a configuration with no roots is never used.
            (false, None) => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient { base: base.trim_end_matches('/').to_owned(), api_key: api_key.to_owned(), client })
    }

    /// Sends one request to `base + path` and returns the status and the
    /// JSON answer (or the raw text as a JSON string when it is not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let url = format!("{}{path}", self.base);
        let uri: http::Uri = url.parse().map_err(|_| ClientError::Url(url.clone()))?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| ClientError::Http(format!("{url}: {e:?}")))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            Ok((status, value))
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| ClientError::Timeout(TIMEOUT))?
    }
}
