//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! `/status` (JSON), the live status page at `/` and its data,
//! `/api/summary` (JSON). Bound to 127.0.0.1 by default. It never decides.
//!
//! HTTP/1.1 is hyper's, on the engine's tokio runtime; this module owns the
//! accept loop, the routes and the limits:
//!
//! - GET and HEAD on the known paths; any other method there is `405` (with
//!   `Allow: GET, HEAD`), any other path `404`.
//! - Keep-alive. A client has [`HEADER_READ_TIMEOUT`] to send each request's
//!   head (idle keep-alive included) and a connection lives at most
//!   [`CONNECTION_LIFETIME`] (then it is closed after the response in
//!   progress, or [`SHUTDOWN_GRACE`] later at the latest): a slow client
//!   cannot hold a connection forever.
//! - A request line whose target is over [`MAX_URI_BYTES`] is answered
//!   `414`, however long it is (the first request line of a connection is
//!   watched as it is read; a later one is checked by the route, and gets
//!   `431` beyond [`MAX_HEAD_BYTES`]); a request head over
//!   [`MAX_HEAD_BYTES`] is answered `431` (by hyper, before any route sees
//!   the request). Nothing is answered from a truncated read.
//! - At most [`MAX_CONNECTIONS`] connections at once: beyond them the server
//!   accepts no more until one closes (they wait in the kernel's backlog),
//!   so the admin port cannot use up the engine's file descriptors.
//! - When `accept` fails (the open-files limit: `EMFILE`, `ENFILE`; memory),
//!   the loop sleeps, from [`ACCEPT_BACKOFF_MIN`] doubling to
//!   [`ACCEPT_BACKOFF_MAX`], instead of retrying at once (which spins a
//!   core), and counts the failure in `clearance_admin_accept_errors_total`.

pub mod recent;
pub mod summary;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Time a client has to send a request head, counted from when the server
/// starts waiting for it (so it also bounds an idle keep-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is served; then it is closed once the response
/// in progress is sent.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long a connection being closed (lifetime over, or the server
/// stopping) may take to finish its response before it is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The longest request target (path and query) served; longer is `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest request head (request line and headers); larger is `431`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// The first sleep after a failed `accept`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest sleep after failed `accept`s in a row.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The status page, served at `/`: one HTML file with its script, no build
/// step. It polls `/api/summary`.
pub const STATUS_PAGE: &str = include_str!("admin/status.html");

/// What `/status` and `/readyz` report; implemented by the engine.
pub trait StatusSource: Send + Sync + 'static {
    /// Whether the engine is ready to decide.
    fn ready(&self) -> bool;
    /// Whether the engine is alive: false once one of its tasks has died
    /// (it is stopping). `/healthz` answers 503 then.
    fn healthy(&self) -> bool {
        true
    }
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
}

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("cannot bind the admin server to {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Bind the admin listener (so the caller learns the real port at once).
pub async fn bind(addr: &str) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// What the routes answer from.
struct App {
    metrics: PrometheusHandle,
    status: Arc<dyn StatusSource>,
}

/// Serve until `shutdown`: accept connections (at most [`MAX_CONNECTIONS`]
/// at once, backing off when `accept` fails) and serve each on a task of
/// its own. Connections still open at `shutdown` finish their response in
/// progress, within [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    status: Arc<dyn StatusSource>,
    shutdown: CancellationToken,
) {
    let app = Arc::new(App { metrics, status });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                tokio::spawn(connection(
                    stream,
                    Arc::clone(&app),
                    permit,
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                metrics::counter!(m::ADMIN_ACCEPT_ERRORS_TOTAL).increment(1);
                if is_connection_error(&e) {
                    // That one connection failed before it was accepted;
                    // the next may be fine.
                    continue;
                }
                if backoff == ACCEPT_BACKOFF_MIN {
                    tracing::warn!(error = %e, "admin server: accept failed; backing off");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Errors of one incoming connection (not of the listener): retried at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// Serve one connection: keep-alive, limits and timeouts, then a lingering
/// close (the write side first, then whatever the client still sends is
/// read and dropped, briefly), so that a response sent while the client was
/// still writing (a `431`) is not lost to a reset.
async fn connection(
    stream: TcpStream,
    app: Arc<App>,
    _slot: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(app.respond(&req)))
    });
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES + 8 * 1024)
        .keep_alive(true)
        .serve_connection(TokioIo::new(FirstLine::new(stream)), service);
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let finished = tokio::select! {
        r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => Some(r),
        _ = &mut lifetime => None,
        _ = shutdown.cancelled() => None,
    };
    if finished.is_none() {
        // Close after the response in progress, if any.
        std::pin::Pin::new(&mut conn).graceful_shutdown();
        let grace = tokio::time::timeout(
            SHUTDOWN_GRACE,
            std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)),
        )
        .await;
        if grace.is_err() {
            return;
        }
    }
    let guarded = conn.into_parts().io.into_inner();
    let too_long = guarded.too_long;
    let mut stream = guarded.inner;
    if too_long {
        // hyper saw a read error, answered nothing; the answer is ours.
        let body = "request line too long\n";
        let head = format!(
            "HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, stream.write_all(head.as_bytes())).await;
    }
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 8192];
        let mut left = 256 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The longest first request line of a connection: a target of
/// [`MAX_URI_BYTES`], the method and the version.
const MAX_REQUEST_LINE: usize = MAX_URI_BYTES + 64;

/// The connection's stream, watching its first request line: once more
/// than [`MAX_REQUEST_LINE`] bytes have come without its end, reading
/// fails (hyper gives up without answering) and `too_long` tells the
/// connection to answer `414` itself. Without this, a request line longer
/// than hyper's buffer would get `431`. (A later request on a keep-alive
/// connection has its target checked by the route: `414` up to
/// [`MAX_HEAD_BYTES`], `431` beyond.)
struct FirstLine<S> {
    inner: S,
    /// Bytes of the first line seen so far; `None` once it has ended.
    seen: Option<usize>,
    too_long: bool,
}

impl<S> FirstLine<S> {
    fn new(inner: S) -> Self {
        FirstLine {
            inner,
            seen: Some(0),
            too_long: false,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstLine<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (std::task::Poll::Ready(Ok(())), Some(seen)) = (&polled, self.seen) {
            let new = &buf.filled()[before..];
            let line = match new.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.seen = None;
                    seen + end
                }
                None => {
                    self.seen = Some(seen + new.len());
                    seen + new.len()
                }
            };
            if line > MAX_REQUEST_LINE {
                self.too_long = true;
                self.seen = None;
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "request line too long",
                )));
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstLine<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Body = Full<Bytes>;

fn response(code: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    response(code, "text/plain", body)
}

/// The known paths.
const ROUTES: &[&str] = &[
    "/",
    "/metrics",
    "/healthz",
    "/readyz",
    "/status",
    "/api/summary",
];

impl App {
    fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        let target_len = req
            .uri()
            .path_and_query()
            .map_or(req.uri().path().len(), |p| p.as_str().len());
        if target_len > MAX_URI_BYTES {
            let mut r = text(StatusCode::URI_TOO_LONG, "request target too long\n");
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        let path = req.uri().path();
        if !ROUTES.contains(&path) {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match path {
            "/" => response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(STATUS_PAGE.as_bytes()),
            ),
            "/metrics" => response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            "/healthz" if self.status.healthy() => text(StatusCode::OK, "ok\n"),
            "/healthz" => text(
                unavailable,
                "unhealthy: a task failed, the engine is stopping\n",
            ),
            "/readyz" if !self.status.healthy() => text(
                unavailable,
                "not ready: a task failed, the engine is stopping\n",
            ),
            "/readyz" if self.status.ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(unavailable, "not ready: eligibility feed catching up\n"),
            "/status" => response(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&self.status.status()).unwrap_or_default(),
            ),
            _ => {
                let doc = summary::summary(
                    &self.metrics.render(),
                    &self.status.status(),
                    self.status.ready(),
                    self.status.healthy(),
                    recent::log(),
                );
                response(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&doc).unwrap_or_default(),
                )
            }
        }
    }
}

/// A minimal GET client for the admin API (used by the demo, the load
/// generator, `clearance healthcheck` and the tests): one request on a
/// connection of its own, with hyper's HTTP/1.1 client. Returns the status
/// code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let invalid = |e: hyper::http::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let req = Request::get(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(invalid)?;
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok::<_, std::io::Error>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    // The connection is driven beside the exchange; it ends when the server
    // closes it (the request says `Connection: close`).
    let (result, _) = tokio::join!(exchange, conn);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake(AtomicBool, AtomicBool);
    impl StatusSource for Fake {
        fn ready(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
        fn healthy(&self) -> bool {
            !self.1.load(Ordering::SeqCst)
        }
        fn status(&self) -> serde_json::Value {
            serde_json::json!({"ready": self.ready()})
        }
    }

    async fn server() -> (SocketAddr, Arc<Fake>, CancellationToken) {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = Arc::new(Fake(AtomicBool::new(false), AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let h = crate::metrics::install();
        tokio::spawn(serve(l, h, fake.clone(), stop.clone()));
        (addr, fake, stop)
    }

    /// Send `raw` on a connection of its own (while reading, so that a
    /// response sent before the request is complete is seen) and return
    /// everything the server answered until it closed.
    async fn raw(addr: SocketAddr, raw: Vec<u8>) -> String {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&raw).await;
            let _ = w.shutdown().await;
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out)).await;
        writer.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn endpoints() {
        let (addr, fake, stop) = server().await;
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
        fake.0.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
        let (code, body) = get(addr, "/status").await.unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("\"ready\": true"), "{body}");
        assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
        assert_eq!(get(addr, "/metrics").await.unwrap().0, 200);
        let (code, page) = get(addr, "/").await.unwrap();
        assert_eq!(code, 200);
        assert!(page.contains("<title>clearance"), "{page}");
        let (code, body) = get(addr, "/api/summary").await.unwrap();
        assert_eq!(code, 200);
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["ready"], true, "{doc}");
        // A dead task: unhealthy and unready, whatever else says ready.
        fake.1.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 503);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
        stop.cancel();
    }

    #[tokio::test]
    async fn head_has_no_body_and_wrong_methods_are_405() {
        let (addr, _fake, stop) = server().await;
        let out = raw(
            addr,
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {out:?}"
        );
        let out = raw(
            addr,
            b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .to_vec(),
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{out}"
        );
        assert!(
            out.to_ascii_lowercase().contains("allow: get, head"),
            "{out}"
        );
        let out = raw(
            addr,
            b"DELETE /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        stop.cancel();
    }

    #[tokio::test]
    async fn keep_alive_serves_two_requests_on_one_connection() {
        let (addr, _fake, stop) = server().await;
        let out = raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec(),
        )
        .await;
        assert_eq!(out.matches("HTTP/1.1 ").count(), 2, "{out}");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("ok\nHTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );

        // Sequentially, waiting for the first answer before the second
        // request: the connection stays open in between.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with("ok\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after the first request");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(rest.contains("\"ready\""), "{rest}");
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_request_lines_get_414_and_oversized_heads_431() {
        let (addr, _fake, stop) = server().await;
        let long = format!(
            "GET /status?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "a".repeat(20_000)
        );
        let out = raw(addr, long.into_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        // Longer than hyper's whole buffer: still 414, not 431.
        let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "c".repeat(100_000));
        let out = raw(addr, huge.into_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        // A long target on the second request of a keep-alive connection
        // is checked by the route.
        let second = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "d".repeat(20_000)
        );
        let out = raw(addr, second.into_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("ok\nHTTP/1.1 414 URI Too Long\r\n"), "{out}");
        let mut big = b"GET /status HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..1000 {
            big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "b".repeat(90)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        assert!(big.len() > 100_000);
        let out = raw(addr, big).await;
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_header_timeout() {
        let (addr, _fake, stop) = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(10),
            s.read_to_end(&mut out),
        )
        .await;
        assert!(
            read.is_ok(),
            "the connection is still open after the timeout"
        );
        assert!(t.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_secs(1));
        stop.cancel();
    }
}
