//! The one line per finished stream (`streamhost::stream` target), written by its own
//! thread (`streamhost-log`): a worker only queues the record, bounded by `QUEUE`, so a
//! stalled journal or a slow log pipe never blocks relaying. When the queue is full the
//! record is dropped and counted (`streamhost_stream_log_dropped_total`). Dropping the
//! log (when the data plane ends, at exit) waits, bounded by `FLUSH_LIMIT`, until the
//! queued lines are written, so the last streams of a drain are not missing from it.

use crate::key::StreamKey;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::time::Duration;

/// Records waiting for the writer at most (a few KiB of memory; a worker ends far fewer
/// streams per second than a working journal takes lines).
pub(crate) const QUEUE: usize = 4096;

/// How long the end of the data plane waits for queued lines at most (a stalled journal
/// must not hold up an exit).
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// What the line says about a finished stream.
pub(crate) struct Finished {
    pub key: StreamKey,
    pub first_to_second: u64,
    pub second_to_first: u64,
    pub duration_ms: u64,
    pub aborted: bool,
}

pub(crate) struct StreamLog {
    /// `None` only while dropping.
    tx: Option<SyncSender<Finished>>,
    /// Signalled by the writer when the queue is closed and written out.
    /// (In a mutex only because a receiver is not `Sync` and the log is shared.)
    flushed: std::sync::Mutex<Receiver<()>>,
}

impl StreamLog {
    /// Starts the writer thread, which logs each record through `tracing`.
    pub fn start() -> std::io::Result<StreamLog> {
        StreamLog::with_writer(QUEUE, log)
    }

    /// A queue of `cap` records to a thread that hands each to `write`; the thread ends
    /// when the `StreamLog` is dropped.
    pub fn with_writer(
        cap: usize,
        mut write: impl FnMut(Finished) + Send + 'static,
    ) -> std::io::Result<StreamLog> {
        let (tx, rx) = sync_channel(cap);
        let (done, flushed) = channel();
        std::thread::Builder::new()
            .name("streamhost-log".into())
            .spawn(move || {
                drain(rx, &mut write);
                let _ = done.send(());
            })?;
        Ok(StreamLog {
            tx: Some(tx),
            flushed: std::sync::Mutex::new(flushed),
        })
    }

    /// Queues a record without waiting; false when it was dropped (the queue is full).
    pub fn record(&self, f: Finished) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(f).is_ok())
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what is queued.
        drop(self.tx.take());
        if let Ok(flushed) = self.flushed.get_mut() {
            let _ = flushed.recv_timeout(FLUSH_LIMIT);
        }
    }
}

fn drain(rx: Receiver<Finished>, write: &mut impl FnMut(Finished)) {
    for f in rx {
        write(f);
    }
}

fn log(f: Finished) {
    tracing::info!(
        target: "streamhost::stream",
        key = %f.key,
        bytes_first_to_second = f.first_to_second,
        bytes_second_to_first = f.second_to_first,
        duration_ms = f.duration_ms,
        outcome = if f.aborted { "aborted" } else { "done" },
        "stream finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    fn record(n: u64) -> Finished {
        Finished {
            key: StreamKey::from_parts("sid", "a@b/c", "d@e/f"),
            first_to_second: n,
            second_to_first: 0,
            duration_ms: 0,
            aborted: false,
        }
    }

    #[test]
    fn a_stalled_writer_never_blocks_the_recorder_and_drops_are_reported() {
        // The writer stalls (as a blocked journal would) until the test lets it go.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let written = Arc::new(Mutex::new(Vec::new()));
        let (g, w) = (gate.clone(), written.clone());
        let log = StreamLog::with_writer(4, move |f| {
            drop(g.lock().unwrap());
            w.lock().unwrap().push(f.first_to_second);
        })
        .unwrap();
        let t0 = Instant::now();
        let mut accepted = Vec::new();
        let mut dropped = 0;
        // The queue holds 4, the stalled writer 1: of 20, at most 5 are taken.
        for n in 0..20 {
            if log.record(record(n)) {
                accepted.push(n);
            } else {
                dropped += 1;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "recording waited");
        assert!(accepted.len() <= 5 && accepted.len() >= 4, "{accepted:?}");
        assert_eq!(dropped, 20 - accepted.len());
        drop(held);
        drop(log);
        // Every accepted record is written, in order, by the time the log is dropped.
        assert_eq!(*written.lock().unwrap(), accepted);
    }

    #[test]
    fn dropping_the_log_writes_out_what_is_queued() {
        // A slow writer (a busy journal): the drop waits for all of it.
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        let log = StreamLog::with_writer(64, move |f| {
            std::thread::sleep(Duration::from_millis(5));
            w.lock().unwrap().push(f.first_to_second);
        })
        .unwrap();
        for n in 0..40 {
            assert!(log.record(record(n)));
        }
        drop(log);
        assert_eq!(*written.lock().unwrap(), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_stalled_writer_holds_the_drop_only_for_the_flush_limit() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let log = StreamLog::with_writer(4, move |_| drop(g.lock().unwrap())).unwrap();
        assert!(log.record(record(1)));
        let t0 = Instant::now();
        drop(log);
        let waited = t0.elapsed();
        drop(held);
        assert!(
            waited >= FLUSH_LIMIT && waited < FLUSH_LIMIT * 10,
            "{waited:?}"
        );
    }
}
