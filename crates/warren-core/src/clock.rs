//! The broker's monotonic millisecond clock, passed in as a value.
//!
//! Nothing below the connection reads the time by itself: queue logic (TTL, `x-expires`,
//! expiry at the head) takes `now` as an argument, in the style of quinn-proto's
//! `handle_timeout(now)`. The connection reads the clock once per batch of input and hands the
//! value down; the queue timer service reads it when a deadline fires. So a test can run the
//! whole broker on a [`Clock::manual`] clock and move time forward with
//! [`ManualClock::advance`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds on a [`Clock`]. Never 0 (0 means "no deadline" where a deadline is stored).
pub type Millis = u64;

/// When the process first read the clock, and the Unix time (ms) at that moment.
static START: OnceLock<(Instant, u64)> = OnceLock::new();

fn start() -> (Instant, u64) {
    *START.get_or_init(|| {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), epoch)
    })
}

fn system_now() -> Millis {
    (start().0.elapsed().as_millis() as u64).max(1)
}

/// A clock: the real monotonic one, or a manual one for tests.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Milliseconds since the process first read the clock.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// A manual clock starting at 1 ms, and its handle.
    pub fn manual() -> (Clock, Arc<ManualClock>) {
        Self::manual_at(Duration::ZERO)
    }

    /// A manual clock starting `start` after 1 ms (as a broker restarted that much later
    /// sees it), and its handle.
    pub fn manual_at(start: Duration) -> (Clock, Arc<ManualClock>) {
        let m = Arc::new(ManualClock {
            now: AtomicU64::new(1 + start.as_millis() as u64),
            changed: tokio::sync::Notify::new(),
        });
        (Clock::Manual(m.clone()), m)
    }

    /// The current time.
    pub fn now(&self) -> Millis {
        match self {
            Clock::System => system_now(),
            Clock::Manual(m) => m.now.load(Ordering::Acquire),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch that correspond to `now()`
    /// (`now() + epoch_offset()`): what is stored on disk for deadlines and timestamps that
    /// must survive a restart (a message's expiry, stream timestamps). A manual clock's time is
    /// taken as Unix time itself, so a test can restart onto an advanced clock.
    pub fn wall(&self) -> u64 {
        self.now().saturating_add(self.epoch_offset())
    }

    /// The wall-clock time of clock time `at` (0 stays 0: no deadline).
    pub fn to_wall(&self, at: Millis) -> u64 {
        if at == 0 {
            return 0;
        }
        let now = self.now();
        let wall = self.wall();
        if at >= now {
            wall.saturating_add(at - now)
        } else {
            wall.saturating_sub(now - at).max(1)
        }
    }

    /// The clock time of wall-clock time `wall_at` (0 stays 0); one already past maps to the
    /// earliest time, 1.
    pub fn from_wall(&self, wall_at: u64) -> Millis {
        if wall_at == 0 {
            return 0;
        }
        let wall = self.wall();
        if wall_at > wall {
            self.now().saturating_add(wall_at - wall)
        } else {
            1
        }
    }

    /// What to add to this clock's time to get Unix time in ms (what stream timestamps and
    /// `x-max-age` need, since they outlive the process). A manual clock's time is taken as
    /// Unix time itself.
    pub fn epoch_offset(&self) -> u64 {
        match self {
            Clock::System => start().1,
            Clock::Manual(_) => 0,
        }
    }

    /// Waits until the clock reaches `at`, or (manual clock) until it moved, whichever comes
    /// first: callers re-check the time and loop.
    pub async fn sleep_until(&self, at: Millis) {
        match self {
            Clock::System => {
                let now = system_now();
                if at > now {
                    tokio::time::sleep(Duration::from_millis(at - now)).await;
                }
            }
            Clock::Manual(m) => {
                let changed = m.changed.notified();
                if m.now.load(Ordering::Acquire) < at {
                    changed.await;
                }
            }
        }
    }
}

/// The handle of a manual clock.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    changed: tokio::sync::Notify,
}

impl ManualClock {
    /// Moves the clock forward and wakes whoever sleeps on it.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// The current time.
    pub fn now(&self) -> Millis {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_moves_only_when_advanced() {
        let (clock, handle) = Clock::manual();
        assert_eq!(clock.now(), 1);
        let c = clock.clone();
        let sleeper = tokio::spawn(async move {
            while c.now() < 501 {
                c.sleep_until(501).await;
            }
            c.now()
        });
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        handle.advance(Duration::from_millis(200));
        handle.advance(Duration::from_millis(300));
        assert_eq!(sleeper.await.expect("join"), 501);
    }

    #[test]
    fn system_clock_is_never_zero_and_monotonic() {
        let c = Clock::System;
        let a = c.now();
        let b = c.now();
        assert!(a >= 1 && b >= a);
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn the_system_clock_maps_to_unix_time() {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let c = Clock::System;
        let mapped = c.now() + c.epoch_offset();
        assert!(mapped.abs_diff(unix) < 5_000, "{mapped} vs {unix}");
        assert_eq!(Clock::manual().0.epoch_offset(), 0);
    }
}
