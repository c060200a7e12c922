//! The HTTP layer: listeners, connections, routing, and the one place where
//! errors become status codes and JSON. The only module that knows hyper.
//!
//! Every connection is bounded: a semaphore caps how many are open (one
//! over the cap is closed at once and counted), hyper's timer makes the
//! header-read timeout real (slowloris), the read buffer caps header size,
//! bodies are read with a length limit and a deadline. Shutdown stops
//! accepting, lets in-flight requests finish within a grace period, then
//! closes what is left.

use crate::feed::{FeedError, RevocationBatch, UpdateBatch};
use crate::gateway::admission::{Class, Refusal, Slot};
use crate::gateway::{CheckinError, CheckinRequest, Gateway, LiveConfig, ScanError, ScanRequest};
use crate::holder::HolderId;
use crate::operations::auth::Role;
use crate::operations::config::ServerSettings;
use crate::operations::metrics::Listener;
use crate::policy::Direction;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

mod inspect;
mod stream;

/// Every answer is one buffer, except the tracing queries, which stream.
type Body = Either<Full<Bytes>, stream::StreamBody>;

/// An error answer. Built anywhere, turned into a response in one place.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// Refused by priority admission: the answer says why and when to retry.
    pub refusal: Option<Refusal>,
}

/// How soon a request refused by admission may be sent again, in seconds.
const RETRY_AFTER_S: &str = "1";

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, message: message.into(), refusal: None }
    }
    fn refused(r: Refusal) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: Cow::Borrowed(r.message()), refusal: Some(r) }
    }
    fn bad_request(m: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        let status = match e {
            FeedError::Malformed(_) => StatusCode::BAD_REQUEST,
            FeedError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            FeedError::Replay { .. } => StatusCode::CONFLICT,
            FeedError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<CheckinError> for ApiError {
    fn from(e: CheckinError) -> Self {
        let status = match e {
            CheckinError::BadCode(_) => StatusCode::UNAUTHORIZED,
            CheckinError::UnknownHolder => StatusCode::NOT_FOUND,
            CheckinError::AlreadyToday => StatusCode::CONFLICT,
            CheckinError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CheckinError::NotReady | CheckinError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ScanError> for ApiError {
    fn from(e: ScanError) -> Self {
        let status = match e {
            ScanError::NotReady | ScanError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(b.into()))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok_json<T: Serialize>(value: &T) -> Response<Body> {
    json_response(StatusCode::OK, serde_json::to_vec(value).expect("serialisable"))
}

fn error_response(gw: &Gateway, e: ApiError) -> Response<Body> {
    gw.metrics().rejected_requests.with_label_values(&[e.status.as_str()]).inc();
    let body = match e.refusal {
        None => serde_json::json!({ "error": e.message }),
        Some(r) => serde_json::json!({ "error": e.message, "reason": r.as_str() }),
    };
    let mut r = json_response(e.status, serde_json::to_vec(&body).expect("json"));
    if e.refusal.is_some() {
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The first wait after a failed accept, doubled on each failure in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Serves one listener until `shutdown` resolves, then drains. With `tls`,
/// every connection is a TLS handshake first (bounded by the header-read
/// timeout), then the same HTTP/1.1.
pub async fn serve(
    listener: TcpListener,
    which: Listener,
    gw: Arc<Gateway>,
    settings: ServerSettings,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    // Each listener has its own cap: a flood on the public side never
    // takes the admin listener's room (and `operations::limits` made sure
    // both caps fit in the open-file limit).
    let cap = match which {
        Listener::Public => settings.max_connections,
        Listener::Admin => settings.admin_max_connections,
    };
    let permits = Arc::new(Semaphore::new(cap));
    // One address may hold at most this many public connections (off when 0).
    let per_client = (which == Listener::Public && settings.max_connections_per_client > 0)
        .then(|| Arc::new(PerClient::new(settings.max_connections_per_client)));
    gw.metrics().connection_limit(which).set(i64::try_from(cap).unwrap_or(i64::MAX));
    let graceful = GracefulShutdown::new();
    let settings = Arc::new(settings);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    s
                }
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE), out of memory:
                    // the pending connection stays queued, and retrying at
                    // once would spin. Back off, doubling up to a bound, and
                    // let closing connections free what is missing.
                    gw.metrics().accept_errors(which).inc();
                    tracing::warn!(listener = which.as_str(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gw.metrics().rejected_connections(which).inc();
            drop(stream);
            continue;
        };
        let client = match &per_client {
            None => None,
            Some(clients) => match clients.enter(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    gw.metrics().rejected_connections_per_client.inc();
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (gw, settings, watcher, tls) = (gw.clone(), settings.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let open = gw.metrics().open_connections(which).clone();
            open.inc();
            match tls {
                None => connection(TokioIo::new(stream), gw, which, settings, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(settings.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(TokioIo::new(s), gw, which, settings, watcher).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake not done within the header-read timeout"),
                    }
                }
            }
            open.dec();
            drop(client);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = which.as_str(), "grace period over; closing remaining connections");
    }
}

/// Connections held per client address, for the public listener's
/// per-client cap.
struct PerClient {
    cap: usize,
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its address's count, given back on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl PerClient {
    fn new(cap: usize) -> PerClient {
        PerClient { cap, held: Default::default() }
    }

    /// A place for one more connection from `ip`, or `None` at the cap.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientSlot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.clients.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// One HTTP/1.1 connection, plain or over TLS, watched for graceful
/// shutdown.
async fn connection<I>(io: I, gw: Arc<Gateway>, which: Listener, settings: Arc<ServerSettings>, graceful: Watcher)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let s2 = settings.clone();
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        let s = s2.clone();
        async move { Ok::<_, Infallible>(route(&gw, which, &s, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, svc);
    if let Err(e) = graceful.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Set by [`read_body`] once a request's body has been read to its end.
///
/// Put in the request's extensions only when the request has a body. An
/// answer given while a body is still unread (refused before reading it,
/// over the limit, too slow) is the last on its connection: hyper will not
/// read on past a body nobody consumed, so the answer says
/// `Connection: close` and the client knows not to send its next request
/// there.
#[derive(Clone)]
struct BodyRead(Arc<AtomicBool>);

async fn route(gw: &Gateway, which: Listener, s: &ServerSettings, mut req: Request<Incoming>) -> Response<Body> {
    let body_read = (!hyper::body::Body::is_end_stream(req.body())).then(|| {
        let flag = Arc::new(AtomicBool::new(false));
        req.extensions_mut().insert(BodyRead(flag.clone()));
        flag
    });
    let mut response = dispatch(gw, which, s, req).await;
    if body_read.is_some_and(|f| !f.load(Ordering::Acquire)) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn dispatch(gw: &Gateway, which: Listener, s: &ServerSettings, req: Request<Incoming>) -> Response<Body> {
    let result = match (which, req.method(), req.uri().path()) {
        // HEAD is GET without the body (hyper leaves the body out).
        (_, &Method::GET | &Method::HEAD, "/healthz") => Ok(ok_json(&serde_json::json!({ "status": "alive" }))),
        (_, &Method::GET | &Method::HEAD, "/readyz") => Ok(readyz(gw)),
        (Listener::Public, &Method::POST, "/v1/scan") => scan(gw, s, req).await,
        (Listener::Public, &Method::GET, p) if p.starts_with("/v1/holders/") => holder(gw, &req).await,
        (Listener::Public, &Method::POST, "/v1/checkins") => checkin(gw, s, req).await,
        (Listener::Public, &Method::GET, "/v1/revocations/filter") => revocation_filter(gw, &req).await,
        (Listener::Public, &Method::GET, "/v1/checkpoints") => inspect::checkpoints(gw, &req).await,
        (Listener::Public, &Method::POST, "/v1/inspect/decode") => inspect::decode(gw, req).await,
        (Listener::Public, &Method::GET, p) if p == "/inspect" || p.starts_with("/inspect/") => {
            inspect::page(gw, p).await
        }
        (Listener::Admin, &Method::GET, "/metrics") => Ok(metrics(gw)),
        (Listener::Admin, &Method::POST, "/v1/admin/updates") => updates(gw, s, req).await,
        (Listener::Admin, &Method::POST, "/v1/admin/revocations") => revocations(gw, s, req).await,
        (Listener::Admin, &Method::POST, "/v1/admin/reload") => reload(gw, &req),
        (Listener::Admin, &Method::GET, "/v1/admin/feed") => feed_state(gw, &req),
        (Listener::Admin, &Method::GET, "/v1/admin/visits") => visits(gw, &req, None).await,
        (Listener::Admin, &Method::GET, "/openapi.yaml") => Ok(openapi()),
        (Listener::Admin, &Method::GET, "/v1/admin/cluster/state") => cluster_state(gw, &req).await,
        (Listener::Admin, &Method::GET, p) if p.starts_with("/v1/admin/holders/") && p.ends_with("/visits") => {
            // Not a slice by lengths: "/v1/admin/holders/visits" has both
            // affixes overlapping.
            let hex = p.strip_prefix("/v1/admin/holders/").and_then(|r| r.strip_suffix("/visits")).unwrap_or("");
            match hex.parse::<HolderId>() {
                Ok(h) => visits(gw, &req, Some(h)).await,
                Err(e) => Err(ApiError::bad_request(e.to_string())),
            }
        }
        (
            Listener::Admin,
            _,
            "/metrics"
            | "/openapi.yaml"
            | "/v1/admin/updates"
            | "/v1/admin/revocations"
            | "/v1/admin/reload"
            | "/v1/admin/feed",
        )
        | (
            Listener::Public,
            _,
            "/v1/scan" | "/v1/checkins" | "/v1/revocations/filter" | "/v1/checkpoints" | "/v1/inspect/decode",
        )
        | (_, _, "/healthz" | "/readyz") => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    };
    result.unwrap_or_else(|e| error_response(gw, e))
}

fn readyz(gw: &Gateway) -> Response<Body> {
    let ready = gw.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = serde_json::json!({ "ready": ready });
    // A replica says how fresh it is (docs/CLUSTER.md).
    if let Some(r) = gw.replica() {
        body["cluster"] = r.status();
    }
    json_response(status, serde_json::to_vec(&body).expect("json"))
}

fn metrics(gw: &Gateway) -> Response<Body> {
    let body = gw.metrics_text();
    let mut r = Response::new(full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// The API contract, `docs/openapi.yaml`, as built into this binary.
fn openapi() -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(include_bytes!("../../../docs/openapi.yaml"))));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    r
}

/// Loads the live configuration (once for the whole request: the caller
/// passes it on), checks the bearer key against it and that the key's role
/// is one of `allowed`.
fn authorize(gw: &Gateway, req: &Request<Incoming>, allowed: &[Role]) -> Result<Arc<LiveConfig>, ApiError> {
    let key = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer key"))?;
    let live = gw.live();
    let role = live.keys.role_of(key).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown key"))?;
    if allowed.contains(&role) {
        Ok(arc_swap::Guard::into_inner(live))
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("role {role} may not do this")))
    }
}

/// The credentials of `Authorization: Bearer <key>`. The scheme is
/// case-insensitive (RFC 9110 §11.1: `bearer` and `BEARER` are `Bearer`),
/// and one or more spaces may separate it from the key.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let key = &rest[rest.iter().position(|&b| b != b' ')?..];
    Some(key)
}

/// Takes a slot for a request of `class`, or the 503 that refuses it.
async fn admit(gw: &Gateway, class: Class) -> Result<Slot, ApiError> {
    gw.admission().admit(class).await.map_err(ApiError::refused)
}

/// Reads a body of at most `limit` bytes within `deadline`.
async fn read_body(req: Request<Incoming>, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    let read = req.extensions().get::<BodyRead>().cloned();
    let bytes = read_body_inner(req, limit, deadline).await?;
    if let Some(BodyRead(flag)) = read {
        flag.store(true, Ordering::Release);
    }
    Ok(bytes)
}

async fn read_body_inner(req: Request<Incoming>, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes"));
    if let Some(len) = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(deadline, body.collect()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body not received in time")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::bad_request("could not read body")),
    }
}

/// Parses a JSON body. On failure it parses again, tracking the path, so
/// that the error names the field ("temperature_c: invalid type ...")
/// without slowing down the requests that are fine.
fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let detail = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(pe) if !pe.path().to_string().is_empty() && pe.path().to_string() != "." => {
                format!("{}: {}", pe.path(), pe.inner())
            }
            _ => e.to_string(),
        };
        ApiError::bad_request(format!("invalid {what}: {detail}"))
    })
}

#[derive(Deserialize)]
struct ScanBody<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    #[serde(borrow)]
    checkpoint: Cow<'a, str>,
    #[serde(default)]
    direction: Direction,
    temperature_c: Option<f64>,
}

#[derive(Serialize)]
struct ScanAnswer {
    decision: &'static str,
    color: &'static str,
    reason: &'static str,
    holder: Option<String>,
    epoch: u64,
}

async fn scan(gw: &Gateway, s: &ServerSettings, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let live = authorize(gw, &req, &[Role::Turnstile, Role::Inspector])?;
    let bytes = read_body(req, s.max_body_bytes, s.body_read_timeout).await?;
    // After the body: a slow client never holds a slot, and a refused scan
    // keeps its connection.
    let _slot = admit(gw, Class::Scan).await?;
    let body: ScanBody<'_> = parse_json(&bytes, "scan request")?;
    let outcome = gw
        .scan(
            &live,
            &ScanRequest {
                code: &body.code,
                checkpoint: &body.checkpoint,
                direction: body.direction,
                temperature_c: body.temperature_c,
            },
        )
        .await?;
    let d = outcome.decision;
    let answer = ScanAnswer {
        decision: d.decision_str(),
        color: d.color.as_str(),
        reason: d.reason.as_str(),
        holder: outcome.holder.map(|h| h.masked()),
        epoch: outcome.epoch,
    };
    let response = ok_json(&answer);
    gw.metrics().record_scan(&d, started.elapsed().as_secs_f64());
    Ok(response)
}

async fn holder(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let live = authorize(gw, req, &[Role::Inspector, Role::Authority])?;
    let _slot = admit(gw, Class::Status).await?;
    let hex = &req.uri().path()["/v1/holders/".len()..];
    let id: HolderId =
        hex.parse().map_err(|e: crate::holder::ParseHolderError| ApiError::bad_request(e.to_string()))?;
    let status = gw.holder_status(&live, &id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown holder"))?;
    Ok(ok_json(&status))
}

#[derive(Deserialize)]
struct CheckinBody {
    code: String,
    temperature_c: f64,
    #[serde(default)]
    symptoms: Vec<String>,
    region: Option<String>,
}

/// `POST /v1/checkins`: no device key; the holder's own code authenticates.
async fn checkin(gw: &Gateway, s: &ServerSettings, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(req, s.max_body_bytes, s.body_read_timeout).await?;
    let _slot = admit(gw, Class::Checkin).await?;
    let body: CheckinBody = parse_json(&bytes, "check-in")?;
    let live = arc_swap::Guard::into_inner(gw.live());
    let outcome = gw
        .checkin(
            &live,
            &CheckinRequest {
                code: &body.code,
                temperature_c: body.temperature_c,
                symptoms: &body.symptoms,
                region: body.region.as_deref(),
            },
        )
        .await?;
    Ok(ok_json(&outcome))
}

/// `GET /v1/revocations/filter`: the Bloom filter for offline apps, with
/// its version as the ETag.
async fn revocation_filter(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, req, &Role::ALL)?;
    let _slot = admit(gw, Class::Export).await?;
    let (version, body) = gw.revocation_export();
    let etag = format!("\"{version}\"");
    let unchanged = req
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if unchanged {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(body));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r
    };
    r.headers_mut().insert(http::header::ETAG, HeaderValue::from_str(&etag).expect("digits and quotes"));
    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[derive(Serialize)]
struct Applied {
    epoch: u64,
    seq: u64,
    applied: usize,
}

async fn updates(gw: &Gateway, s: &ServerSettings, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, &req, &[Role::Authority])?;
    let bytes = read_body(req, s.max_admin_body_bytes, s.admin_body_read_timeout).await?;
    let batch: UpdateBatch = parse_json(&bytes, "update batch")?;
    let epoch = gw.apply_updates(&batch).await?;
    Ok(ok_json(&Applied { epoch, seq: batch.seq, applied: batch.changes.len() }))
}

async fn revocations(gw: &Gateway, s: &ServerSettings, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, &req, &[Role::Authority])?;
    let bytes = read_body(req, s.max_admin_body_bytes, s.admin_body_read_timeout).await?;
    let batch: RevocationBatch = parse_json(&bytes, "revocation batch")?;
    let epoch = gw.apply_revocations(&batch).await?;
    Ok(ok_json(&Applied { epoch, seq: batch.seq, applied: batch.revocations.len() }))
}

fn reload(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, req, &[Role::Operator, Role::Authority])?;
    let generation = gw.reload().map_err(|e| ApiError::bad_request(format!("reload refused: {e}")))?;
    Ok(ok_json(&serde_json::json!({ "generation": generation, "epoch": gw.store().epoch() })))
}

fn feed_state(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, req, &[Role::Operator, Role::Authority])?;
    Ok(ok_json(&serde_json::json!({ "last_seq": gw.last_feed_seq(), "epoch": gw.store().epoch() })))
}

/// The value of `name` in a query string, percent-decoded (`+` is kept as
/// is: RFC 3339 offsets use it).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let q = query?;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn time_param(req: &Request<Incoming>, name: &str, default: u64) -> Result<u64, ApiError> {
    match query_param(req.uri().query(), name) {
        None => Ok(default),
        Some(s) => crate::clock::parse_rfc3339(&s).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
    }
}

/// `GET /v1/admin/cluster/state[?holders=1]`: the state digest, and every
/// holder's state as JSON lines after it (docs/CLUSTER.md).
async fn cluster_state(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, req, &[Role::Operator, Role::Authority])?;
    let holders = query_param(req.uri().query(), "holders").is_some_and(|v| v == "1");
    let at = gw.now();
    // The whole store is walked: off the request workers. The gateway is
    // shared by reference only, so the walk borrows it in place.
    let body = tokio::task::block_in_place(|| {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        let mut push = |l: &crate::cluster::digest::HolderLine| {
            let _ = serde_json::to_writer(&mut lines, l);
            lines.push(b'\n');
        };
        let summary = crate::cluster::digest::summarize(gw, at, if holders { Some(&mut push) } else { None });
        let _ = serde_json::to_writer(&mut out, &summary);
        out.push(b'\n');
        out.extend_from_slice(&lines);
        out
    });
    let mut r = Response::new(full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// `GET /v1/admin/visits?checkpoint=ID&from=&to=` and
/// `GET /v1/admin/holders/{hex}/visits?from=&to=`: JSON lines, streamed.
async fn visits(gw: &Gateway, req: &Request<Incoming>, holder: Option<HolderId>) -> Result<Response<Body>, ApiError> {
    authorize(gw, req, &[Role::Authority])?;
    // Held until the stream ends: the query's work is in the blocking task.
    let slot = admit(gw, Class::Tracing).await?;
    let from = time_param(req, "from", 0)?;
    let to = time_param(req, "to", u64::MAX)?;
    let checkpoint = match holder {
        Some(_) => None,
        None => Some(
            query_param(req.uri().query(), "checkpoint")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| ApiError::bad_request("checkpoint is required"))?,
        ),
    };
    let index = gw.visit_index().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tracing index unavailable (log.mode is off, or the index failed: restart to rebuild it from the log)",
        )
    })?;
    // Read your writes: everything acknowledged before the query is in it,
    // or the query is refused; it never answers short.
    if let Err(behind) = gw.index_caught_up().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "tracing index is {behind} records behind the log: this answer would miss registrations; retry shortly"
            ),
        ));
    }
    // A replica answers for the cluster: its own index and the others'.
    let sources = gw.replica().map(|r| {
        let mut s = vec![(r.node().to_owned(), index.clone())];
        s.extend(r.remote_visits());
        s
    });
    let (tx, body) = stream::stream(8);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut out = Lines { tx, buf: Vec::with_capacity(64 << 10), open: true, unwritable: false };
        let result = match (&holder, &checkpoint, sources) {
            (_, _, Some(sources)) => {
                let q = match (&holder, &checkpoint) {
                    (Some(h), _) => crate::cluster::tracing::Query::Holder(*h),
                    (None, c) => crate::cluster::tracing::Query::Checkpoint(c.clone().unwrap_or_default()),
                };
                crate::cluster::tracing::merged(&sources, &q, from, to, &mut |v| out.push(&v))
            }
            (Some(h), _, None) => index.by_holder(h, from, to, |v| out.push(&v)),
            (None, Some(c), None) => index.by_checkpoint(c, from, to, |v| out.push(&v)),
            (None, None, None) => Ok(()),
        };
        match result {
            Ok(()) if out.unwritable => out.fail("a visit could not be written out".to_owned()),
            Ok(()) => out.finish(),
            // The status is already sent: end the stream with an error so
            // the client sees a broken body, never a silently short one.
            Err(e) => {
                tracing::error!(error = %e, "tracing query failed mid-stream");
                out.fail(e.to_string());
            }
        }
    });
    let mut r = Response::new(Either::Right(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// A streamed answer's JSON lines, sent in chunks of about 60 KiB.
struct Lines {
    tx: stream::StreamWriter,
    buf: Vec<u8>,
    /// The client is still there.
    open: bool,
    /// A line could not be serialized: the answer stops there, and must
    /// not end as if it were complete.
    unwritable: bool,
}

impl Lines {
    /// Adds a line; false to stop the query (the client left, or the line
    /// could not be written).
    fn push(&mut self, v: &impl Serialize) -> bool {
        if serde_json::to_writer(&mut self.buf, v).is_err() {
            self.unwritable = true;
            return false;
        }
        self.buf.push(b'\n');
        if self.buf.len() >= 60 << 10 {
            self.open = self.tx.send(Bytes::from(std::mem::take(&mut self.buf))).is_ok();
        }
        self.open
    }

    /// Sends what is left and ends the answer as complete.
    fn finish(mut self) {
        if !self.open {
            return;
        }
        if !self.buf.is_empty() && self.tx.send(Bytes::from(self.buf)).is_err() {
            return;
        }
        // Err only when the client has gone: nobody is left to answer.
        let _ = self.tx.finish();
    }

    /// Sends what is left and ends the answer with an error.
    fn fail(mut self, reason: String) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Bytes::from(std::mem::take(&mut self.buf)));
        }
        self.tx.fail(std::io::Error::other(reason));
    }
}

/// The request-body parsers, for the fuzz targets (`gateway/fuzz`): the
/// body types stay private to this module.
#[doc(hidden)]
pub mod fuzzing {
    use super::{parse_json, CheckinBody, ScanBody};

    /// Parses a scan body as `POST /v1/scan` does; true if it is one.
    pub fn scan_body(bytes: &[u8]) -> bool {
        parse_json::<ScanBody<'_>>(bytes, "scan request").is_ok()
    }

    /// Parses a check-in body as `POST /v1/checkins` does.
    pub fn checkin_body(bytes: &[u8]) -> bool {
        parse_json::<CheckinBody>(bytes, "check-in").is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_case_insensitively() {
        for v in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR   k1"] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"k1"[..]), "{v}");
        }
        for v in ["Basic k1", "Bearerk1", "Bearer", "Bearer ", "", "Bear k1", "Bearers k1"] {
            assert_eq!(bearer_token(v.as_bytes()), None, "{v}");
        }
    }
}
