//! The load generator's HTTP/1.1 client: one keep-alive connection with one
//! request in flight, written and read by the lane's own task.
//!
//! Why not hyper's client: hyper runs each connection as a second task, so
//! every exchange crosses between two tasks three times (request, answer
//! head, body), and each request builds a URI, a header map and a request
//! object. Here a request is bytes formatted into a buffer the lane reuses
//! ([`RequestHead`]), the answer is read into another buffer and its head
//! parsed by `httparse`: no allocation and no task switch per exchange, a
//! write and a read, as wrk does. What the load generator needs of an answer
//! is small, and all of it is handled: the status, a body framed by
//! `Content-Length`, by chunked encoding or by the end of the connection,
//! interim (1xx) answers, and `Connection: close`.

use crate::target::Endpoint;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The longest answer head (status line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed in an answer head; more is a malformed answer.
const MAX_HEADERS: usize = 64;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("the connection closed before the answer was complete")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed answer head: {0}")]
    Head(#[from] httparse::Error),
    #[error("malformed answer: {0}")]
    Framing(&'static str),
    #[error("answer longer than {0} bytes")]
    TooLong(usize),
}

/// A plain or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Neither: the body runs to the end of the connection.
    Close,
}

#[derive(Debug)]
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    /// The server will not take another request on this connection.
    close: bool,
}

/// Parses an answer head at the start of `buf`; `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    let status = resp.code.ok_or(WireError::Framing("no status"))?;
    let (mut length, mut chunked, mut encoded) = (None, false, false);
    // HTTP/1.0 closes unless told otherwise; nothing here asks it to.
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(WireError::Framing("bad content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(WireError::Framing("conflicting content-length"));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; any other makes the body run
            // to the end of the connection.
            encoded = true;
            chunked =
                h.value.rsplit(|&b| b == b',').next().is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value.split(|&b| b == b',').any(|v| v.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            close = true;
        }
    }
    let framing = match (status, encoded, length) {
        (100..=199 | 204 | 304, _, _) => Framing::Length(0),
        // Transfer-Encoding overrides Content-Length.
        (_, true, _) if chunked => Framing::Chunked,
        (_, true, _) => Framing::Close,
        (_, false, Some(l)) => Framing::Length(l),
        (_, false, None) => Framing::Close,
    };
    Ok(Some(Head { status, len, framing, close }))
}

/// The request line and headers of a lane's requests, formatted once: a
/// request is then a few copies into the lane's buffer.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET {base}/v1/holders/` : the holder's hex follows.
    lookup_start: Vec<u8>,
    /// ` HTTP/1.1` and the headers of a lookup, blank line included.
    lookup_end: Vec<u8>,
    /// `POST {base}/v1/scan HTTP/1.1`, the headers and `content-length: `:
    /// the body's length, a blank line and the body follow.
    scan: Vec<u8>,
}

impl RequestHead {
    pub fn new(endpoint: &Endpoint, bearer: &[u8]) -> RequestHead {
        let base = endpoint.base_path.as_bytes();
        let headers = [b"host: ", endpoint.host.as_bytes(), b"\r\nauthorization: ", bearer, b"\r\n"].concat();
        RequestHead {
            lookup_start: [b"GET ", base, b"/v1/holders/"].concat(),
            lookup_end: [b" HTTP/1.1\r\n", &headers[..], b"\r\n"].concat(),
            scan: [
                b"POST ",
                base,
                b"/v1/scan HTTP/1.1\r\n",
                &headers[..],
                b"content-type: application/json\r\ncontent-length: ",
            ]
            .concat(),
        }
    }

    /// `GET /v1/holders/{hex}` into `out` (cleared first).
    pub fn lookup(&self, holder: &[u8; 16], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.lookup_start);
        let mut hex = [0u8; 32];
        hex::encode_to_slice(holder, &mut hex).expect("32 digits for 16 bytes");
        out.extend_from_slice(&hex);
        out.extend_from_slice(&self.lookup_end);
    }

    /// `POST /v1/scan` with a JSON `body` into `out` (cleared first).
    pub fn scan(&self, body: &[u8], out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        out.extend_from_slice(&self.scan);
        write!(out, "{}\r\n\r\n", body.len()).expect("writing to a Vec does not fail");
        out.extend_from_slice(body);
    }
}

/// One keep-alive connection with its buffers.
pub struct Connection {
    stream: Stream,
    /// What was read of the current answer.
    read: Vec<u8>,
    /// The current answer's body (decoded when chunked).
    body: Vec<u8>,
    /// False once the connection cannot carry another exchange: the server
    /// said `Connection: close`, the body ran to the end of the connection,
    /// or bytes came that nothing asked for.
    reusable: bool,
}

impl Connection {
    /// Wraps a connected TCP stream.
    pub fn plain(stream: TcpStream) -> Connection {
        Connection::new(Stream::Plain(stream))
    }

    /// Wraps a TLS stream after its handshake.
    pub fn tls(stream: TlsStream<TcpStream>) -> Connection {
        Connection::new(Stream::Tls(Box::new(stream)))
    }

    fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            read: Vec::with_capacity(READ_CHUNK),
            body: Vec::with_capacity(READ_CHUNK),
            reusable: true,
        }
    }

    /// Whether another request may go on this connection: it is reusable
    /// and, as far as can be told without waiting, the server has not
    /// closed it while it was idle (it would otherwise fail the request
    /// that a fresh connection would carry). Costs no system call unless
    /// something arrived since the last answer.
    pub fn usable(&mut self) -> bool {
        if !self.reusable {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        // Pending: nothing to read, the normal case. Anything else is the
        // end of the connection, an error or bytes nobody asked for.
        matches!(Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf), Poll::Pending)
    }

    /// The body of the last answer.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Writes `request` and reads its answer, whose body is then
    /// [`Connection::body`], at most `max_body` bytes. Returns the status.
    /// After an error the connection's state is unknown: drop it.
    pub async fn exchange(&mut self, request: &[u8], max_body: usize) -> Result<u16, WireError> {
        self.stream.write_all(request).await?;
        // A no-op on plain TCP; TLS buffers what it encrypts.
        self.stream.flush().await?;
        self.read.clear();
        self.body.clear();
        loop {
            let head = loop {
                if let Some(head) = parse_head(&self.read)? {
                    break head;
                }
                if self.read.len() >= MAX_HEAD {
                    return Err(WireError::TooLong(MAX_HEAD));
                }
                self.fill().await?;
            };
            if (100..200).contains(&head.status) {
                // An interim answer (e.g. 100 Continue): the real one follows.
                self.read.drain(..head.len);
                continue;
            }
            let end = match head.framing {
                Framing::Length(n) => {
                    if n > max_body {
                        return Err(WireError::TooLong(max_body));
                    }
                    while self.read.len() < head.len + n {
                        self.fill().await?;
                    }
                    self.body.extend_from_slice(&self.read[head.len..head.len + n]);
                    head.len + n
                }
                Framing::Chunked => self.chunked(head.len, max_body).await?,
                Framing::Close => {
                    while self.fill_or_end().await? {
                        if self.read.len() - head.len > max_body {
                            return Err(WireError::TooLong(max_body));
                        }
                    }
                    self.body.extend_from_slice(&self.read[head.len..]);
                    self.reusable = false;
                    self.read.len()
                }
            };
            // One request in flight: anything after the answer is unasked.
            if head.close || end != self.read.len() {
                self.reusable = false;
            }
            return Ok(head.status);
        }
    }

    /// Decodes a chunked body that starts at `at` into `self.body`; returns
    /// where it ends (trailers included).
    async fn chunked(&mut self, mut at: usize, max_body: usize) -> Result<usize, WireError> {
        loop {
            let (used, size) = match httparse::parse_chunk_size(&self.read[at..]) {
                Ok(httparse::Status::Complete(c)) => c,
                Ok(httparse::Status::Partial) => {
                    self.fill().await?;
                    continue;
                }
                Err(_) => return Err(WireError::Framing("bad chunk size")),
            };
            at += used;
            if size == 0 {
                break;
            }
            // Checked: the size is the peer's number, up to 2^64 - 1.
            let size =
                usize::try_from(size).ok().filter(|s| self.body.len().checked_add(*s).is_some_and(|t| t <= max_body));
            let size = size.ok_or(WireError::TooLong(max_body))?;
            while self.read.len() < at + size + 2 {
                self.fill().await?;
            }
            if &self.read[at + size..at + size + 2] != b"\r\n" {
                return Err(WireError::Framing("chunk without its line end"));
            }
            self.body.extend_from_slice(&self.read[at..at + size]);
            at += size + 2;
        }
        // Trailer lines, ended by an empty one.
        loop {
            match self.read[at..].windows(2).position(|w| w == b"\r\n") {
                Some(0) => return Ok(at + 2),
                Some(line) => at += line + 2,
                None if self.read.len() - at > MAX_HEAD => return Err(WireError::TooLong(MAX_HEAD)),
                None => {
                    self.fill().await?;
                }
            }
        }
    }

    /// Reads more; the end of the connection is an error.
    async fn fill(&mut self) -> Result<(), WireError> {
        match self.fill_or_end().await? {
            true => Ok(()),
            false => Err(WireError::Closed),
        }
    }

    /// Reads more; false at the end of the connection.
    async fn fill_or_end(&mut self) -> Result<bool, WireError> {
        self.read.reserve(READ_CHUNK);
        Ok(self.stream.read_buf(&mut self.read).await? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[test]
    fn heads_and_their_framing() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").unwrap().unwrap();
        assert_eq!((h.status, h.len, h.framing, h.close), (200, 38, Framing::Length(5), false));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-len").unwrap().is_none());
        let h = parse_head(b"HTTP/1.1 503 Busy\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert!(h.unwrap().close);
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n").unwrap();
        assert_eq!(h.unwrap().framing, Framing::Chunked);
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").unwrap();
        assert_eq!(h.unwrap().framing, Framing::Close);
        let h = parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").unwrap().unwrap();
        assert!(h.close);
        assert_eq!(parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap().framing, Framing::Length(0));
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"), Err(WireError::Framing(_))));
        let twice = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
        assert!(matches!(parse_head(twice), Err(WireError::Framing(_))));
        assert!(matches!(parse_head(b"SMTP ready\r\n\r\n"), Err(WireError::Head(_))));
    }

    #[test]
    fn requests_are_formatted_once_and_filled_in() {
        let e = Endpoint::parse("http://127.0.0.1:8080/gw", None).unwrap();
        let head = RequestHead::new(&e, b"Bearer k");
        let mut out = Vec::new();
        head.lookup(&[0xab; 16], &mut out);
        let want = format!(
            "GET /gw/v1/holders/{} HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nauthorization: Bearer k\r\n\r\n",
            "ab".repeat(16)
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        head.scan(br#"{"a":1}"#, &mut out);
        let want = "POST /gw/v1/scan HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nauthorization: Bearer k\r\n\
                    content-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    /// A server that reads one request at a time (up to its blank line) and
    /// writes the next canned answer, split at `split` to test partial reads;
    /// then closes.
    async fn canned(answers: Vec<&'static [u8]>, split: usize) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for a in answers {
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    got.push(b[0]);
                }
                let cut = split.min(a.len());
                s.write_all(&a[..cut]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(&a[cut..]).await.unwrap();
            }
        });
        Endpoint::parse(&format!("http://{addr}"), None).unwrap()
    }

    async fn open(e: &Endpoint) -> Connection {
        Connection::plain(TcpStream::connect(e.addr).await.unwrap())
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    #[tokio::test]
    async fn keep_alive_exchanges_split_anywhere() {
        for split in [0, 5, 20, 40, 1000] {
            let answers: Vec<&[u8]> = vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            ];
            let e = canned(answers, split).await;
            let mut c = open(&e).await;
            assert_eq!(c.exchange(GET, 100).await.unwrap(), 200, "split {split}");
            assert_eq!(c.body(), b"hello");
            assert!(c.usable());
            assert_eq!(c.exchange(GET, 100).await.unwrap(), 503);
            assert_eq!(c.body(), b"");
            assert_eq!(c.exchange(GET, 100).await.unwrap(), 200);
            assert_eq!(c.body(), b"abcde");
            assert!(c.usable());
            assert_eq!(c.exchange(GET, 100).await.unwrap(), 200);
            assert_eq!(c.body(), b"ok");
            assert!(!c.usable(), "the server said close");
        }
    }

    #[tokio::test]
    async fn bodies_to_the_end_and_broken_answers() {
        let e = canned(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], 1000).await;
        let mut c = open(&e).await;
        assert_eq!(c.exchange(GET, 100).await.unwrap(), 200);
        assert_eq!(c.body(), b"until the end");
        assert!(!c.usable());

        let e = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"], 1000).await;
        let mut c = open(&e).await;
        assert!(matches!(c.exchange(GET, 100).await, Err(WireError::Closed)));

        let e = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n"], 1000).await;
        let mut c = open(&e).await;
        assert!(matches!(c.exchange(GET, 100).await, Err(WireError::TooLong(100))));

        let huge = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        let e = canned(vec![huge], 1000).await;
        let mut c = open(&e).await;
        assert!(matches!(c.exchange(GET, 100).await, Err(WireError::TooLong(100))));

        let e = canned(vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n"], 1000).await;
        let mut c = open(&e).await;
        assert!(matches!(c.exchange(GET, 100).await, Err(WireError::Framing(_))));

        // Bytes after the answer that nobody asked for.
        let e = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxy"], 1000).await;
        let mut c = open(&e).await;
        assert_eq!(c.exchange(GET, 100).await.unwrap(), 200);
        assert!(!c.usable());
    }

    /// A connection the server closes while it is idle is found unusable
    /// before a request is written on it.
    #[tokio::test]
    async fn an_idle_close_is_noticed() {
        let e = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"], 1000).await;
        let mut c = open(&e).await;
        assert_eq!(c.exchange(GET, 100).await.unwrap(), 200);
        // The canned server closes after its last answer.
        let started = std::time::Instant::now();
        while c.usable() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "the close was never seen");
            tokio::task::yield_now().await;
        }
    }
}
