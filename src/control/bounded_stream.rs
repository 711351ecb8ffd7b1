//! The component's socket as the XML parser sees it: every byte read from the server goes
//! through a `StanzaFilter` first, so a stanza over the limits never reaches the parser.
//! Writes pass straight through.

use super::stanza_bounds::{DropReason, Dropped, StanzaFilter, StanzaLimits};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// Read from the socket at a time.
const CHUNK: usize = 16 * 1024;
/// Dropped stanzas waiting for the service to answer (IQ errors); beyond it they are
/// only counted.
pub const REPORTS: usize = 64;

/// Stanzas dropped so far, by reason; outlives reconnects (read by `/metrics`).
#[derive(Debug, Default)]
pub struct DropCounts([AtomicU64; 3]);

impl DropCounts {
    fn add(&self, r: DropReason) {
        self.0[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) for every reason.
    pub fn snapshot(&self) -> [(DropReason, u64); 3] {
        DropReason::ALL.map(|r| (r, self.0[r as usize].load(Ordering::Relaxed)))
    }
}

/// `inner` with its reads filtered; dropped stanzas are counted in `counts` and sent to
/// `reports` while it has room.
#[derive(Debug)]
pub struct BoundedStream<S> {
    inner: S,
    filter: StanzaFilter,
    /// Filtered bytes not yet handed to the reader, from `pos`.
    ready: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
    dropped: Vec<Dropped>,
    counts: Arc<DropCounts>,
    reports: mpsc::Sender<Dropped>,
}

impl<S> BoundedStream<S> {
    pub fn new(
        inner: S,
        limits: StanzaLimits,
        counts: Arc<DropCounts>,
        reports: mpsc::Sender<Dropped>,
    ) -> BoundedStream<S> {
        BoundedStream {
            inner,
            filter: StanzaFilter::new(limits),
            ready: Vec::new(),
            pos: 0,
            scratch: vec![0; CHUNK].into_boxed_slice(),
            dropped: Vec::new(),
            counts,
            reports,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BoundedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Read until something passes the filter: a dropped stanza yields nothing, and
        // returning zero bytes would read as end of stream.
        while this.pos == this.ready.len() {
            if this.filter.poisoned() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed XML from the server",
                )));
            }
            this.ready.clear();
            this.pos = 0;
            let mut rb = ReadBuf::new(&mut this.scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.filter
                .feed(&this.scratch[..n], &mut this.ready, &mut this.dropped);
            for d in this.dropped.drain(..) {
                this.counts.add(d.reason);
                let _ = this.reports.try_send(d);
            }
            // A large stanza has been passed on: give its memory back.
            if this.ready.is_empty() && this.ready.capacity() > 4 * CHUNK {
                this.ready = Vec::new();
            }
        }
        let n = buf.remaining().min(this.ready.len() - this.pos);
        buf.put_slice(&this.ready[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BoundedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
