//! A small HTTP/1.1 client for the CLI's authority commands (`push`,
//! `revoke`): JSON in, JSON out, bearer key, bounded time.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?}")]
    Url(String),
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one request and returns the status and the JSON answer (or the
/// raw text as a JSON string when it is not JSON).
pub async fn request(
    method: Method,
    url: &str,
    api_key: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Value), ClientError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {api_key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| ClientError::Http(format!("{url}: {e}")))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    };
    tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| ClientError::Timeout(TIMEOUT))?
}
