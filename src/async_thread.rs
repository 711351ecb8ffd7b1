//! A named thread running one future on its own current-thread tokio runtime, told to stop
//! through a watch channel and joined when stopped or dropped. The control plane and the
//! metrics endpoint each run on one.
//!
//! The thread is supervised: if the future panics, the panic is logged and counted and,
//! after a short pause, the future is made anew on a fresh runtime, so that a bug the
//! outside world can reach in the control plane costs a reconnect, never the data plane
//! (whose workers are other threads and share nothing the future could leave locked
//! half-way: the data plane is reached only through its mailboxes).

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// Pause before a panicked future is made again (bounds a crash loop's log rate).
const RESTART_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct AsyncThread {
    name: &'static str,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AsyncThread {
    /// Starts `name` (with a stack of `stack_size` bytes) running the future `f` makes
    /// from the stop receiver (it turns `true` when the thread is asked to stop). The
    /// future is made on the new thread, so it need not be `Send`. A panic is counted in
    /// `panics` and the future made again, unless the thread is being stopped.
    pub fn spawn<F, Fut>(
        name: &'static str,
        stack_size: usize,
        panics: Arc<AtomicU64>,
        f: F,
    ) -> io::Result<AsyncThread>
    where
        F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        // The first runtime is built here so that failing to build one is an error to
        // the caller, not a dead thread.
        let first = runtime()?;
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(stack_size)
            .spawn(move || supervise(name, first, rx, &panics, f))?;
        Ok(AsyncThread {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the future to stop and joins the thread (once; later calls do nothing).
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!(thread = self.name, "thread panicked");
            }
        }
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn supervise<F, Fut>(
    name: &'static str,
    first: tokio::runtime::Runtime,
    stop: watch::Receiver<bool>,
    panics: &AtomicU64,
    f: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut rt = Some(first);
    loop {
        let Some(current) = rt.take().or_else(|| runtime().ok()) else {
            tracing::error!(thread = name, "cannot build a runtime; retrying");
            std::thread::sleep(RESTART_PAUSE);
            continue;
        };
        // A clone has seen what the original has: a stop sent before the thread got here
        // (even before its first run) still shows as a change.
        let rx = stop.clone();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| current.block_on(f(rx))));
        // Dropping the runtime cancels whatever the panicked future left spawned.
        drop(current);
        match run {
            Ok(()) => return,
            Err(p) => {
                panics.fetch_add(1, Ordering::Relaxed);
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(thread = name, "panicked ({what}); restarting it");
            }
        }
        if *stop.borrow() {
            return;
        }
        std::thread::sleep(RESTART_PAUSE);
        if *stop.borrow() {
            return;
        }
    }
}

impl Drop for AsyncThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_sent_before_the_thread_runs_is_seen() {
        for _ in 0..50 {
            let mut t = AsyncThread::spawn(
                "test-early-stop",
                1 << 20,
                Default::default(),
                |mut stop| async move {
                    let _ = stop.changed().await;
                },
            )
            .unwrap();
            t.stop(); // joins: hangs if the stop was missed
        }
    }

    #[test]
    fn a_panicking_future_is_made_again_and_still_stops() {
        let panics = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let mut t = AsyncThread::spawn(
            "test-supervised",
            1 << 20,
            panics.clone(),
            move |mut stop| {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        panic!("first run fails");
                    }
                    let _ = stop.changed().await;
                }
            },
        )
        .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(panics.load(Ordering::SeqCst), 1);
        t.stop();
    }
}
