//! The scrape endpoint: a minimal HTTP/1.1 server on shard 0 answering
//! `GET /metrics` with the OpenMetrics text of every shard.
//!
//! One request per connection (`Connection: close`). The request head is
//! parsed with `httparse`, must fit in `METRICS_REQUEST_BYTES_MAX` and
//! arrive within `METRICS_READ_TIMEOUT`; a body is never read. Answers:
//! 200 for `GET /metrics` (a query string is ignored), 405 for another
//! method on `/metrics`, 404 for another path, 400 for a malformed or
//! oversized request, 503 when a shard did not answer within
//! `METRICS_SCRAPE_TIMEOUT`. At most `METRICS_CONNECTIONS_MAX` scrape
//! connections are served at once; more are closed at accept.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::exposition::{self, CONTENT_TYPE, Scrape};
use crate::constants::{
    METRICS_CONNECTIONS_MAX, METRICS_READ_TIMEOUT, METRICS_REQUEST_BYTES_MAX,
    METRICS_SCRAPE_TIMEOUT,
};
use crate::lifecycle::StopSignal;
use crate::runtime::{self, TcpListener, TcpStream};
use crate::shard::Shard;

/// When the process started serving, for `sluice_uptime_seconds`.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Note the broker's start time (first call wins).
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The head is not complete yet: read more.
    Incomplete,
    /// `GET /metrics`.
    Metrics,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Another path.
    NotFound,
    /// Not an HTTP request head.
    BadRequest,
}

/// Route the request head in `buf` (bytes read so far).
pub fn route(buf: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Route::Incomplete,
        Err(_) => Route::BadRequest,
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            match (req.method, path) {
                (Some("GET"), "/metrics") => Route::Metrics,
                (_, "/metrics") => Route::MethodNotAllowed,
                _ => Route::NotFound,
            }
        }
    }
}

/// A full HTTP response with `Connection: close`.
pub fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, "text/plain; charset=utf-8", body.as_bytes())
}

/// Serve scrapes until a stop is requested.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener, stop: Arc<StopSignal>) {
    info!(addr = ?listener.local_addr().ok(), "metrics endpoint listening");
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = stop.unless_stopped(listener.accept()).await;
        let Some(accepted) = accepted else { return };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                runtime::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= METRICS_CONNECTIONS_MAX {
            debug!("too many metrics connections: closing a new one");
            continue;
        }
        open.set(open.get() + 1);
        let (shard, open) = (shard.clone(), open.clone());
        runtime::spawn_detached(async move {
            if let Err(e) = handle(&shard, stream).await {
                debug!(error = %e, "metrics connection failed");
            }
            open.set(open.get() - 1);
        });
    }
}

/// Read one request head (bounded in size and time), answer it, close.
async fn handle(shard: &Rc<Shard>, mut stream: TcpStream) -> std::io::Result<()> {
    let read_head = async {
        let mut buf = vec![0u8; METRICS_REQUEST_BYTES_MAX];
        let mut len = 0;
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            len += n;
            match route(&buf[..len]) {
                Route::Incomplete if len == buf.len() => return Ok(Some(Route::BadRequest)),
                Route::Incomplete => {}
                r => return Ok(Some(r)),
            }
        }
    };
    let route: std::io::Result<Option<Route>> =
        match runtime::timeout(METRICS_READ_TIMEOUT, read_head).await {
            Some(r) => r,
            None => return Ok(()), // Too slow: close without an answer.
        };
    let answer = match route? {
        None => return Ok(()),
        Some(Route::Metrics) => match scrape(shard).await {
            Ok(body) => response(200, "OK", CONTENT_TYPE, body.as_bytes()),
            Err(reason) => plain(503, "Service Unavailable", &reason),
        },
        Some(Route::MethodNotAllowed) => plain(405, "Method Not Allowed", "use GET\n"),
        Some(Route::NotFound) => plain(404, "Not Found", "metrics are at /metrics\n"),
        Some(Route::BadRequest | Route::Incomplete) => plain(400, "Bad Request", "bad request\n"),
    };
    stream.write_all(&answer).await?;
    stream.close().await
}

/// Collect every shard's snapshot (bounded in time) and encode them.
async fn scrape(shard: &Rc<Shard>) -> Result<String, String> {
    let collect = shard.invoke_on_all(|s| async move { super::snapshot(&s) });
    let shards = match runtime::timeout(METRICS_SCRAPE_TIMEOUT, collect).await {
        Some(Ok(shards)) => shards,
        Some(Err(e)) => return Err(format!("{e}\n")),
        None => return Err("a shard did not answer in time\n".into()),
    };
    let uptime = STARTED.get().map(Instant::elapsed).unwrap_or_default();
    exposition::encode(Scrape { shards, uptime }).map_err(|e| format!("encoding failed: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Route::Incomplete
        );
        assert_eq!(route(b"GET /met"), Route::Incomplete);
        assert_eq!(route(b""), Route::Incomplete);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"\x16\x03\x01\x00\xa5\x01"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/9.9\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = response(404, "Not Found", "text/plain", b"no");
        assert_eq!(
            r,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        );
    }
}
