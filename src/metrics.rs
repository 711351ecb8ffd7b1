//! The Prometheus endpoint: plain HTTP/1.1 on its own thread (a current-thread tokio
//! runtime), answering
//!
//! - `GET /metrics`: OpenMetrics text, read at scrape time from `Handle::stats()` and the
//!   control plane (no per-byte cost on the data plane);
//! - `GET /ready`: 200 when the XEP-0114 component is connected, or when there is none;
//!   503 otherwise (a readiness probe);
//! - anything else: 404 (405 for another method on those paths).
//!
//! One response per connection; a request head must arrive within `REQUEST_TIMEOUT` and
//! fit in `http::MAX_HEAD` bytes; at most `MAX_CLIENTS` are served at once.

pub mod collect;
pub mod http;

use crate::async_thread::AsyncThread;
use crate::control::{ConnState, ControlStatus};
use crate::server::Handle;
use collect::Sources;
use http::Route;
use prometheus_client::registry::Registry;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// Time a client has to send its request and read the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 16;

/// The endpoint's thread: small requests, no recursion.
const STACK_SIZE: usize = 512 * 1024;

/// The running endpoint. Dropping it (or `stop`) stops the thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    thread: AsyncThread,
}

/// Binds `addr` and serves `/metrics` and `/ready` for `data` (and `control`, when the
/// component is configured) until the returned server is stopped or dropped.
pub fn serve(
    addr: SocketAddr,
    data: Arc<Handle>,
    control: Option<ControlStatus>,
) -> io::Result<MetricsServer> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics.listen {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let sources = Sources { data, control };
    let panics = Arc::new(AtomicU64::new(0));
    let thread = AsyncThread::spawn("streamhost-metrics", STACK_SIZE, panics, move |stop| {
        // A restart after a panic serves the same socket.
        let listener = listener.try_clone();
        let sources = sources.clone();
        async move {
            match listener {
                Ok(l) => run(l, sources, stop).await,
                Err(e) => tracing::error!("metrics listener: {e}"),
            }
        }
    })?;
    info!(%addr, "metrics listening");
    Ok(MetricsServer { addr, thread })
}

impl MetricsServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and joins the thread.
    pub fn stop(mut self) {
        self.thread.stop();
    }
}

struct State {
    registry: Registry,
    control: Option<ControlStatus>,
    data: Arc<Handle>,
}

impl State {
    /// Ready: the component is logged in (if one is configured) and every worker runs.
    fn ready(&self) -> bool {
        self.control
            .as_ref()
            .is_none_or(|c| c.state() == ConnState::Connected)
            && self.data.worker_health().iter().all(|w| w.alive)
    }

    fn answer(&self, head: Option<&[u8]>) -> Vec<u8> {
        const TEXT: &str = "text/plain; charset=utf-8";
        let Some(head) = head else {
            return http::response(431, TEXT, "request head too large\n", false);
        };
        let (route, head_only) = http::route(head);
        match route {
            Route::Metrics => http::response(
                200,
                collect::CONTENT_TYPE,
                &collect::encode(&self.registry),
                head_only,
            ),
            Route::Ready if self.ready() => http::response(200, TEXT, "ready\n", head_only),
            Route::Ready => http::response(
                503,
                TEXT,
                "not ready: component not logged in, or a worker stopped\n",
                head_only,
            ),
            Route::NotFound => http::response(404, TEXT, "not found\n", head_only),
            Route::MethodNotAllowed => http::response(405, TEXT, "use GET\n", head_only),
            Route::BadRequest => http::response(400, TEXT, "bad request\n", false),
        }
    }
}

async fn run(listener: std::net::TcpListener, sources: Sources, mut stop: watch::Receiver<bool>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("metrics listener: {e}");
            return;
        }
    };
    let state = Arc::new(State {
        control: sources.control.clone(),
        data: sources.data.clone(),
        registry: collect::registry(sources),
    });
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (conn, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many clients");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(REQUEST_TIMEOUT, exchange(conn, &state))
                .await
                .is_err()
            {
                debug!(%peer, "metrics: request timed out");
            }
            drop(slot);
        });
    }
    debug!("metrics stopped");
}

/// Reads one request head, writes the response, closes.
async fn exchange(mut conn: TcpStream, state: &State) {
    let mut buf = vec![0u8; http::MAX_HEAD];
    let mut have = 0;
    let head = loop {
        if let Some(n) = http::head_len(&buf[..have]) {
            break Some(n);
        }
        if have == buf.len() {
            break None;
        }
        match conn.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    };
    let reply = state.answer(head.map(|n| &buf[..n]));
    if conn.write_all(&reply).await.is_ok() {
        let _ = conn.shutdown().await;
    }
}
