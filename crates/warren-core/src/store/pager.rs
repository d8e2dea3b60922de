//! The pager: one OS thread that does the disk reads queues must not do on the event loop.
//!
//! A queue whose backlog is paged to disk asks for its next batch by submitting a job (reading
//! `MessageStore::read_tail`) and keeps serving what it has in memory; the job runs here and
//! hands its result back to the queue (the queue's own callback, so this module knows nothing
//! of queues). Dropping a paged backlog (purge) runs here too. No tokio worker and no queue
//! lock ever waits for these reads.

use parking_lot::Mutex;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// Handle to the pager thread.
pub struct Pager {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pager")
    }
}

impl Pager {
    /// Starts the pager thread (an error if the thread cannot be started).
    pub fn start() -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("warren-pager".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Runs `job` on the pager thread. False if the pager has stopped (the job is dropped).
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> bool {
        match &*self.tx.lock() {
            Some(tx) => tx.send(Box::new(job)).is_ok(),
            None => false,
        }
    }

    /// Finishes the jobs already submitted and stops the thread.
    pub fn stop(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_off_the_caller_thread() {
        let p = Pager::start().expect("start");
        let (tx, rx) = mpsc::channel();
        let me = std::thread::current().id();
        for i in 0..5 {
            let tx = tx.clone();
            assert!(p.submit(move || {
                let _ = tx.send((i, std::thread::current().id() != me));
            }));
        }
        p.stop();
        let got: Vec<(i32, bool)> = rx.try_iter().collect();
        assert_eq!(got, (0..5).map(|i| (i, true)).collect::<Vec<_>>());
        assert!(!p.submit(|| {}), "stopped");
    }
}
