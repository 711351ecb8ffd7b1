//! A named thread running one future on its own current-thread tokio runtime, told to stop
//! through a watch channel and joined when stopped or dropped. The control plane and the
//! metrics endpoint each run on one.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;
use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct AsyncThread {
    name: &'static str,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AsyncThread {
    /// Starts `name` running the future `f` makes from the stop receiver (it turns `true`
    /// when the thread is asked to stop). The future is made on the new thread, so it need
    /// not be `Send`.
    pub fn spawn<F, Fut>(name: &'static str, f: F) -> io::Result<AsyncThread>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rt.block_on(f(rx)))?;
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

impl Drop for AsyncThread {
    fn drop(&mut self) {
        self.stop();
    }
}
