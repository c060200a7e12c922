//! Shared by the baseline servers `bare_http` and `bare_verify`: bind, print
//! the bound address, and serve HTTP/1.1 keep-alive on a multi-threaded
//! tokio runtime, calling a synchronous handler with each request's body.
//!
//! Deliberately the least a server can do with hyper, so that the gateway's
//! throughput can be read as a fraction of what the machine allows.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Bodies beyond this are refused, as the gateway refuses them.
const MAX_BODY: usize = 4096;

/// A JSON answer with the given status.
pub fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Serves until killed. `handler` gets the whole body of every request,
/// whatever its method and path.
pub fn serve<H>(addr: &str, threads: Option<usize>, handler: H) -> anyhow::Result<()>
where
    H: Fn(&[u8]) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    let handler = Arc::new(handler);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        // Scripts read this line to learn the port when binding port 0.
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let resp = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                            Ok(body) => handler(&body.to_bytes()),
                            Err(_) => json(StatusCode::PAYLOAD_TOO_LARGE, Bytes::from_static(b"{\"error\":\"body\"}")),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                // A client that goes away mid-request is not our problem.
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
