//! Routes of the inspector's page (`crate::serving::inspect` has the rest):
//!
//! * `GET /inspect/` and its files, with the page's security headers;
//! * `GET /v1/checkpoints`, the checkpoints to choose from (inspector key);
//! * `POST /v1/inspect/decode`, a camera frame in, the QR text out
//!   (inspector key).
//!
//! The page scans through `POST /v1/scan` and reads status through
//! `GET /v1/holders/{id}` like any inspector app: it has no route of its own
//! that decides or changes anything, so it adds no way around the roles.

use super::{admit, authorize, full, ok_json, query_param, read_body, ApiError, Body};
use crate::gateway::admission::Class;
use crate::gateway::Gateway;
use crate::operations::auth::Role;
use crate::serving::inspect::{self, FrameFormat, MAX_FRAME_BYTES};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Frames being received or decoded at once, over the whole process.
///
/// A static, not a field of the gateway: it bounds what camera frames may
/// take of this process's cores and memory (1 MiB bodies, tens of
/// milliseconds of CPU each), and the cores are the process's, however many
/// gateways a test runs in it. A slot is taken before the body is read, so
/// memory is bounded too; a frame over the bound is answered 503 at once
/// and the page simply sends its next frame later.
static FRAME_SLOTS: Semaphore = Semaphore::const_new(4);

/// How long a frame (up to 1 MiB, from a phone) may take to arrive.
const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(15);

/// `GET /inspect` and `/inspect/...`.
pub(super) async fn page(gw: &Gateway, path: &str) -> Result<Response<Body>, ApiError> {
    let _slot = admit(gw, Class::Inspector).await?;
    // The page lives at `/inspect/` so that its files and the API are
    // reached by relative URLs, which keeps it working behind a proxy that
    // serves the gateway under a prefix.
    let Some(name) = path.strip_prefix("/inspect/") else {
        let mut r = Response::new(full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        r.headers_mut().insert(LOCATION, HeaderValue::from_static("inspect/"));
        return Ok(r);
    };
    let asset = inspect::asset(name).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such file"))?;
    let mut r = Response::new(full(asset.body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    for (name, value) in inspect::SECURITY_HEADERS {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    Ok(r)
}

/// `GET /v1/checkpoints`.
pub(super) async fn checkpoints(gw: &Gateway, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let live = authorize(gw, req, &[Role::Inspector])?;
    let _slot = admit(gw, Class::Inspector).await?;
    Ok(ok_json(&inspect::CheckpointList::of(&live.policy)))
}

/// The frame's format from its Content-Type (and, for grey frames, the
/// `width` and `height` query parameters).
fn frame_format(req: &Request<Incoming>) -> Result<FrameFormat, ApiError> {
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("image/png") {
        return Ok(FrameFormat::Png);
    }
    if !media.eq_ignore_ascii_case("application/octet-stream") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be image/png, or application/octet-stream with width and height",
        ));
    }
    let dim = |name: &str| -> Result<u32, ApiError> {
        query_param(req.uri().query(), name)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is required for a grey frame")))?
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number of pixels")))
    };
    Ok(FrameFormat::Gray { width: dim("width")?, height: dim("height")? })
}

/// `POST /v1/inspect/decode`: `{"code": "HG1:..."}`, or `{"code": null}`
/// when the frame shows no readable code.
pub(super) async fn decode(gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    authorize(gw, &req, &[Role::Inspector])?;
    let format = frame_format(&req)?;
    let _slot = admit(gw, Class::Inspector).await?;
    let permit = FRAME_SLOTS.try_acquire().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "frame decoder busy: send the frame again later")
    })?;
    let body = read_body(req, MAX_FRAME_BYTES, FRAME_BODY_TIMEOUT).await?;
    let read = tokio::task::spawn_blocking(move || inspect::read_qr(format, &body)).await;
    drop(permit);
    let code = match read {
        Ok(Ok(code)) => code,
        Ok(Err(e @ inspect::FrameError::TooLarge)) => {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
        }
        Ok(Err(e)) => return Err(ApiError::bad_request(e.to_string())),
        // `read_qr` catches the decoder's panics; this is the runtime
        // shutting down under us.
        Err(_) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "frame decoder stopped")),
    };
    Ok(ok_json(&serde_json::json!({ "code": code })))
}
