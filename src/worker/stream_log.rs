//! The one line per finished stream (`streamhost::stream` target), written by its own
//! thread (`streamhost-log`): a worker only queues the record, bounded by `QUEUE`, so a
//! stalled journal or a slow log pipe never blocks relaying. When the queue is full the
//! record is dropped and counted (`streamhost_stream_log_dropped_total`).

use crate::key::StreamKey;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Records waiting for the writer at most (a few KiB of memory; a worker ends far fewer
/// streams per second than a working journal takes lines).
pub(crate) const QUEUE: usize = 4096;

/// What the line says about a finished stream.
pub(crate) struct Finished {
    pub key: StreamKey,
    pub first_to_second: u64,
    pub second_to_first: u64,
    pub duration_ms: u64,
    pub aborted: bool,
}

pub(crate) struct StreamLog {
    tx: SyncSender<Finished>,
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
        std::thread::Builder::new()
            .name("streamhost-log".into())
            .spawn(move || drain(rx, &mut write))?;
        Ok(StreamLog { tx })
    }

    /// Queues a record without waiting; false when it was dropped (the queue is full).
    pub fn record(&self, f: Finished) -> bool {
        self.tx.try_send(f).is_ok()
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
        let end = Instant::now() + Duration::from_secs(10);
        while written.lock().unwrap().len() < accepted.len() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every accepted record is written, in order.
        assert_eq!(*written.lock().unwrap(), accepted);
    }
}
