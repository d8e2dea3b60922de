//! The disk alarm (RabbitMQ's `disk_monitor`): the free space of the data dir's filesystem is
//! sampled off the event loop (`statvfs` on a blocking thread), every second, four times a
//! second when it is within twice the limit, and `Broker::disk_alarm` is raised below
//! `disk.free_limit_bytes` and cleared when space returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;

/// Bytes available to the broker on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Starts the monitor for `broker`'s data dir with `limit` free bytes (0: off).
pub fn spawn(broker: Arc<Broker>, limit: u64, shutdown: CancellationToken) {
    if limit == 0 {
        info!("disk alarm disabled (disk.free_limit_bytes = 0)");
        return;
    }
    let dir: PathBuf = broker.config.storage.data_dir.clone();
    tokio::spawn(async move {
        let mut last: Option<bool> = None;
        let mut failed = false;
        loop {
            let d = dir.clone();
            let free = tokio::task::spawn_blocking(move || free_bytes(&d)).await;
            let near = match free {
                Ok(Ok(free)) => {
                    failed = false;
                    let on = free < limit;
                    if last != Some(on) {
                        if on {
                            warn!(
                                free_mb = free / 1_000_000,
                                limit_mb = limit / 1_000_000,
                                dir = %dir.display(),
                                "disk alarm set: free space below the limit, blocking publishers"
                            );
                        } else if last.is_some() {
                            info!(free_mb = free / 1_000_000, "disk alarm cleared");
                        }
                        // Only changes are published, so a test can also set the alarm by hand.
                        // Store writes that fail (a full disk: `Syncer::is_full`) keep the
                        // alarm up whatever statvfs says; the syncer clears it.
                        let store_full = broker.syncer.as_ref().is_some_and(|s| s.is_full());
                        if (last.is_some() || on) && !store_full {
                            broker.disk_alarm.send_replace(on);
                        }
                        last = Some(on);
                    }
                    free < limit.saturating_mul(2)
                }
                Ok(Err(e)) => {
                    if !failed {
                        // No data dir (yet), or not readable: nothing to measure.
                        warn!(dir = %dir.display(), error = %e, "cannot read free disk space");
                        failed = true;
                    }
                    false
                }
                Err(_) => false,
            };
            let every = if near {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
