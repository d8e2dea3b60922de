//! The management API's background thread: where big answers (lists of thousands of queues,
//! exchanges, bindings, connections) are built and written out.
//!
//! One thread, started on first use and shared by every broker in the process, at a lower CPU
//! priority (nice +10): a poller listing 10,000 queues every second costs tens of milliseconds
//! of CPU each time, and on a machine whose cores are busy with AMQP traffic the scheduler
//! should give that time to the tokio workers first. The listing then waits for idle CPU
//! (its latency grows under load) instead of taking a core from publishers and consumers.
//! One thread also bounds how much CPU many concurrent pollers can take. Nothing here blocks
//! a tokio worker: jobs arrive over a channel and answer over a oneshot.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::OnceLock;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How much less CPU priority the thread has than the rest of the broker (nice +10: about a
/// tenth of a busy core's share when it competes with a worker at nice 0).
const NICE: i32 = 10;

fn sender() -> Option<&'static mpsc::Sender<Job>> {
    static TX: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("warren-mgmt".into())
            .spawn(move || {
                // On Linux the nice value is per thread: this lowers only this one.
                if let Err(e) = rustix::process::setpriority_process(None, NICE) {
                    tracing::debug!(error = %e, "management thread keeps normal priority");
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start the management thread"))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// Runs `f` on the management thread and waits for its result; `None` if the thread is not
/// available or `f` panicked (the thread survives a panicking job).
pub(crate) async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)).ok());
    });
    sender()?.send(job).ok()?;
    rx.await.ok().flatten()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        assert_eq!(super::run(|| 2 + 2).await, Some(4));
        let boom: Option<()> = super::run(|| panic!("job panics")).await;
        assert_eq!(boom, None);
        assert_eq!(
            super::run(|| std::thread::current().name().map(str::to_string)).await,
            Some(Some("warren-mgmt".to_string()))
        );
    }
}
