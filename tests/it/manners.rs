//! HTTP manners: what a client can rely on at the protocol level.
//! `Connection: close` on every answer after which the server closes, JSON
//! on every error the gateway chooses, the bearer scheme in any case, HEAD
//! on the health endpoints, and every answer hyper gives by itself listed
//! in docs/API.md.

use healthgate::operations::auth::Role;
use healthgate_tests::TestGateway;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off a raw connection.
struct Answer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn says_close(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{} body is not JSON ({e}): {:?}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
}

/// Reads one answer (head and a Content-Length body); `head_request` says
/// the body is absent whatever Content-Length says.
async fn read_answer(s: &mut TcpStream, head_request: bool) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap_or(0));
        let mut body = vec![0u8; if head_request { 0 } else { len }];
        s.read_exact(&mut body).await.ok()?;
        Some(Answer { status, headers, body })
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the server answered")
}

/// True once the server has closed its side (reads end), false if it
/// answers another request on the same connection.
async fn closed_after(s: &mut TcpStream) -> bool {
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    read_answer(s, false).await.is_none()
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn over_limit_body_says_connection_close_and_closes() {
    let t = TestGateway::start().await;
    let key = t.key(Role::Turnstile).to_owned();
    // Announced over the limit: refused before a byte of it is read.
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    let head =
        format!("POST /v1/scan HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 100000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'a'; 1000]).await.unwrap();
    let a = read_answer(&mut s, false).await.expect("an answer");
    assert_eq!(a.status, 413);
    assert!(a.says_close(), "413 without Connection: close: {:?}", a.headers);
    assert!(a.json()["error"].as_str().unwrap().contains("body over"));
    assert!(closed_after(&mut s).await, "the server answered on after saying close");

    // Chunked, so the size shows only while reading.
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    let head = format!(
        "POST /v1/scan HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(format!("2000\r\n{}\r\n", "a".repeat(0x2000)).as_bytes()).await.unwrap();
    let a = read_answer(&mut s, false).await.expect("an answer");
    assert_eq!(a.status, 413);
    assert!(a.says_close(), "{:?}", a.headers);
    assert!(closed_after(&mut s).await);
}

#[tokio::test]
async fn a_body_refused_unread_closes_with_notice_and_a_read_one_keeps_alive() {
    let t = TestGateway::start().await;
    let metro = t.checkpoint("metro").to_owned();
    let body = serde_json::json!({ "code": t.code(t.holder("green", 0)), "checkpoint": metro }).to_string();
    let send = |key: &str| {
        format!(
            "POST /v1/scan HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Refused before the body is read (unknown key): the last answer.
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    s.write_all(send("not-a-key").as_bytes()).await.unwrap();
    let a = read_answer(&mut s, false).await.expect("an answer");
    assert_eq!(a.status, 401);
    assert!(a.says_close(), "{:?}", a.headers);
    assert!(a.json()["error"].is_string());
    assert!(closed_after(&mut s).await);

    // Read and answered: the connection stays open for the next scan.
    let key = t.key(Role::Turnstile).to_owned();
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    s.write_all(send(&key).as_bytes()).await.unwrap();
    let a = read_answer(&mut s, false).await.expect("an answer");
    assert_eq!((a.status, a.json()["decision"].as_str()), (200, Some("pass")));
    assert!(!a.says_close(), "{:?}", a.headers);
    assert!(!closed_after(&mut s).await, "a keep-alive connection was closed");
}

#[tokio::test]
async fn body_read_timeout_says_connection_close() {
    let t =
        TestGateway::start_with(Box::new(|c| c.replace("[server]\n", "[server]\nbody_read_timeout_ms = 200\n"))).await;
    let key = t.key(Role::Turnstile).to_owned();
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    let head =
        format!("POST /v1/scan HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 50\r\n\r\n{{");
    s.write_all(head.as_bytes()).await.unwrap();
    let a = read_answer(&mut s, false).await.expect("an answer");
    assert_eq!(a.status, 408);
    assert!(a.says_close(), "{:?}", a.headers);
    assert!(a.json()["error"].is_string());
}

#[tokio::test]
async fn lower_case_bearer_scheme_is_accepted() {
    let t = TestGateway::start().await;
    let key = t.key(Role::Inspector).to_owned();
    let path = format!("/v1/holders/{}", t.holder("green", 0));
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: {scheme} {key}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = read_answer(&mut s, false).await.expect("an answer");
        assert_eq!(a.status, 200, "{scheme}: {}", String::from_utf8_lossy(&a.body));
    }
    // Another scheme is still no key.
    let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Basic {key}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, false).await.expect("an answer").status, 401);
}

#[tokio::test]
async fn head_on_health_endpoints_answers_without_a_body() {
    let t = TestGateway::start().await;
    for url in [&t.env.public_url, &t.env.admin_url] {
        for path in ["/healthz", "/readyz"] {
            let mut s = TcpStream::connect(addr(url)).await.unwrap();
            s.write_all(format!("HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let a = read_answer(&mut s, true).await.expect("an answer");
            assert_eq!(a.status, 200, "HEAD {path}");
            assert_eq!(a.header("content-type"), Some("application/json"));
            // No body came: the next answer on the connection starts at once.
            assert!(!closed_after(&mut s).await, "HEAD {path} left a body or closed");
        }
    }
}

/// What hyper answers by itself, before the gateway sees a request, has
/// no JSON body: API.md lists each such status, so a client knows them.
#[tokio::test]
async fn answers_hyper_gives_itself_are_listed_in_the_api_document() {
    let t = TestGateway::start().await;
    let api = std::fs::read_to_string(healthgate_tests::tools::workspace_root().join("docs/API.md")).unwrap();
    let section = api.split("## Answers before routing").nth(1).expect("API.md has the section");
    let cases: [(&str, String); 3] = [
        ("bad framing", "POST /v1/scan HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".into()),
        ("bad request line", "GET /healthz HTTP/9\r\n\r\n".into()),
        ("large headers", format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\n\r\n", "a".repeat(64 * 1024))),
    ];
    for (what, request) in cases {
        let mut s = TcpStream::connect(addr(&t.env.public_url)).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let a = read_answer(&mut s, false).await.unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(a.status >= 400, "{what}: {}", a.status);
        assert!(section.contains(&format!("| {} |", a.status)), "{what}: {} is not listed in API.md", a.status);
        assert!(closed_after(&mut s).await, "{what}: the connection stayed open");
    }
}
