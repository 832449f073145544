//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz`
//! and `/status` (JSON). Bound to 127.0.0.1 by default. It never decides.
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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

/// Serve until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    status: Arc<dyn StatusSource>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        handle(stream, metrics, status),
                    )
                    .await;
                });
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: PrometheusHandle,
    status: Arc<dyn StatusSource>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/healthz") => {
            if status.healthy() {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "unhealthy: a task failed, the engine is stopping\n".to_string(),
                )
            }
        }
        ("GET", "/readyz") => {
            if !status.healthy() {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: a task failed, the engine is stopping\n".to_string(),
                )
            } else if status.ready() {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: eligibility feed catching up\n".to_string(),
                )
            }
        }
        ("GET", "/status") => (
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&status.status()).unwrap_or_default(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// A minimal GET client for the admin API (used by the demo, the load
/// generator and the tests). Returns the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
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

    #[tokio::test]
    async fn endpoints() {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fake = Arc::new(Fake(AtomicBool::new(false), AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let h = crate::metrics::install();
        tokio::spawn(serve(l, h, fake.clone(), stop.clone()));
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
        fake.0.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
        let (code, body) = get(addr, "/status").await.unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("\"ready\": true"), "{body}");
        assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
        assert_eq!(get(addr, "/metrics").await.unwrap().0, 200);
        // A dead task: unhealthy and unready, whatever else says ready.
        fake.1.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 503);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
        stop.cancel();
    }
}
