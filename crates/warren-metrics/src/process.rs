//! The node's resources as rabbitmq_prometheus reports them: resident memory, file
//! descriptors, free disk and the alarm limits. Everything here reads `/proc` or calls
//! `statvfs`, so it runs on a blocking thread (the scrape runs in `spawn_blocking`).

use std::path::Path;
use warren_core::Broker;

/// What the node measures about itself at scrape time.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Resident set size (`/proc/self/statm` × page size).
    pub resident_memory_bytes: Option<u64>,
    /// Entries of `/proc/self/fd`.
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: Option<u64>,
    /// Free bytes on the data dir's filesystem.
    pub disk_free_bytes: Option<u64>,
    /// The disk alarm's limit (`disk.free_limit_bytes` or relative to RAM).
    pub disk_free_limit_bytes: u64,
    /// The memory alarm's limit (`memory.high_watermark` × RAM, or absolute).
    pub memory_limit_bytes: Option<u64>,
    /// Memory alarm in effect.
    pub memory_alarm: bool,
    /// Disk alarm in effect.
    pub disk_alarm: bool,
}

/// Reads the resident set size from `/proc/self/statm` (second field, in pages).
pub fn resident_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// Counts the process's open file descriptors.
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The soft limit on open files.
pub fn max_fds() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The machine's RAM (`MemTotal:` of `/proc/meminfo`), bytes.
pub fn total_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line["MemTotal:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// Measures the node (blocking: call off the event loop).
pub fn measure(broker: &Broker) -> NodeStats {
    let ram = total_ram();
    let dir: &Path = &broker.config.storage.data_dir;
    NodeStats {
        resident_memory_bytes: resident_memory_bytes(),
        open_fds: open_fds(),
        max_fds: max_fds(),
        disk_free_bytes: warren_core::disk_monitor::free_bytes(dir).ok(),
        disk_free_limit_bytes: broker.config.disk.limit_bytes(ram.unwrap_or(0)),
        memory_limit_bytes: ram.map(|r| broker.config.memory.limit_bytes(r)),
        memory_alarm: *broker.alarm.borrow(),
        disk_alarm: *broker.disk_alarm.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let rss = resident_memory_bytes().expect("statm");
        assert!(rss > 1_000_000, "{rss}");
        let fds = open_fds().expect("fd dir");
        assert!(fds >= 3, "{fds}");
        assert!(max_fds().expect("rlimit") >= fds);
        assert!(total_ram().expect("meminfo") > rss);
    }
}
