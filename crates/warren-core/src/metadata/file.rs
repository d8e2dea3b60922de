//! [`FileLog`]: the metadata log in the data directory.
//!
//! Files in `<data_dir>/metadata/`:
//! - `log`: one record per command (the message store's record format: magic, length, CRC32;
//!   payload = 8-byte sequence number + the command's JSON), appended in rounds by the sync
//!   thread, which fsyncs once per round (group commit) and then runs the commands'
//!   callbacks in order;
//! - `snapshot`: a header record with the sequence number it covers, then the commands that
//!   rebuild the state at that point. Written to `snapshot.tmp`, fsynced, renamed over.
//!
//! When the log holds more than twice as many records as the last snapshot (and at least
//! [`COMPACT_MIN`]), the sync thread writes a new snapshot from the current state and
//! truncates the log; records the snapshot already covers are skipped at replay, so a crash
//! between the rename and the truncation changes nothing. A torn tail of the log (a crash in
//! the middle of a write) is cut off at open and logged. A failed write gives the round's
//! callbacks an error (their commands are not applied) and cuts the file back; a failed
//! fsync stops the broker, as for messages.

use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use tracing::{error, info, warn};

use super::{Command, Committed, MetaLog, SnapshotSource};
use crate::store::record;
use crate::store::sync::{Flush, Syncer};

/// Record kind of a logged command.
const COMMAND: u8 = 16;
/// Record kind of a snapshot's header (payload: the sequence number it covers).
const SNAPSHOT: u8 = 17;
/// The log is not compacted below this many records.
pub const COMPACT_MIN: u64 = 4096;

#[derive(Default)]
struct Inner {
    next_seq: u64,
    pending: Vec<u8>,
    callbacks: Vec<Committed>,
    queued_for: u64,
}

struct Files {
    log: File,
    log_len: u64,
    /// Records in the log file.
    log_records: u64,
    /// Commands in the last snapshot.
    snapshot_records: u64,
    /// Highest sequence number written (and so applied, once its round's callbacks ran).
    written_seq: u64,
}

/// The file-backed metadata log.
pub struct FileLog {
    dir: PathBuf,
    syncer: Arc<Syncer>,
    me: Weak<FileLog>,
    inner: Mutex<Inner>,
    files: Mutex<Files>,
    source: OnceLock<SnapshotSource>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog").field("dir", &self.dir).finish()
    }
}

fn read(path: &Path) -> std::io::Result<Option<bytes::Bytes>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(bytes::Bytes::from(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn decode_logged(payload: &[u8]) -> Option<(u64, Command)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let cmd = Command::decode(&payload[8..]).ok()?;
    Some((seq, cmd))
}

fn command_record(out: &mut Vec<u8>, seq: u64, cmd: &Command) {
    record::put_record(out, COMMAND, &[&seq.to_be_bytes(), &cmd.encode()]);
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileLog {
    /// Opens the log in `dir` (created if missing) and returns it with the commands to replay,
    /// oldest first. `initial` (commands converted from an older data dir) becomes the first
    /// snapshot when the directory holds no log yet.
    pub fn open(
        dir: &Path,
        syncer: Arc<Syncer>,
        initial: Option<Vec<Command>>,
    ) -> std::io::Result<(Arc<FileLog>, Vec<Command>)> {
        fs::create_dir_all(dir)?;
        let _ = fs::remove_file(dir.join("snapshot.tmp"));
        let snap_path = dir.join("snapshot");
        let log_path = dir.join("log");
        if let Some(cmds) = initial.filter(|_| !snap_path.exists() && !log_path.exists()) {
            write_snapshot(dir, 0, &cmds)?;
            info!(commands = cmds.len(), "metadata converted into a snapshot");
        }
        let mut out = Vec::new();
        let mut covered = 0u64;
        let mut snapshot_records = 0u64;
        let mut damaged = 0usize;
        if let Some(data) = read(&snap_path)? {
            let s = record::scan(data);
            damaged += s.bad_spans;
            for (kind, payload, _) in s.records {
                match kind {
                    SNAPSHOT if payload.len() == 8 => {
                        covered = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                    }
                    COMMAND => match decode_logged(&payload) {
                        Some((_, c)) => {
                            out.push(c);
                            snapshot_records += 1;
                        }
                        None => damaged += 1,
                    },
                    _ => damaged += 1,
                }
            }
        }
        let mut next_seq = covered + 1;
        let mut log_records = 0u64;
        let mut log_len = 0u64;
        if let Some(data) = read(&log_path)? {
            let len = data.len();
            let s = record::scan(data);
            damaged += s.bad_spans;
            for (kind, payload, _) in s.records {
                match (kind, decode_logged(&payload)) {
                    (COMMAND, Some((seq, c))) => {
                        log_records += 1;
                        next_seq = next_seq.max(seq + 1);
                        if seq > covered {
                            out.push(c);
                        }
                    }
                    _ => damaged += 1,
                }
            }
            log_len = s.valid_end as u64;
            if s.valid_end < len {
                warn!(
                    file = %log_path.display(),
                    cut = len - s.valid_end,
                    "metadata log: torn tail cut off"
                );
                let f = OpenOptions::new().write(true).open(&log_path)?;
                f.set_len(log_len)?;
                f.sync_all()?;
            }
        }
        if damaged > 0 {
            error!(
                dir = %dir.display(),
                damaged, "metadata: damaged records skipped during recovery"
            );
        }
        let existed = log_path.exists();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if !existed {
            sync_dir(dir)?;
        }
        let written_seq = next_seq - 1;
        let me = Arc::new_cyclic(|me| FileLog {
            dir: dir.to_path_buf(),
            syncer,
            me: me.clone(),
            inner: Mutex::new(Inner {
                next_seq,
                ..Inner::default()
            }),
            files: Mutex::new(Files {
                log,
                log_len,
                log_records,
                snapshot_records,
                written_seq,
            }),
            source: OnceLock::new(),
        });
        Ok((me, out))
    }

    /// Writes a snapshot of the current state and empties the log (sync thread, between
    /// rounds: every record written so far has been applied).
    fn compact(&self, files: &mut Files) -> std::io::Result<()> {
        let Some(source) = self.source.get() else {
            return Ok(());
        };
        let cmds = source();
        if let Err(e) = write_snapshot(&self.dir, files.written_seq, &cmds) {
            // A full disk: the log stands as it is (compaction only saves space). Try again
            // once the log has grown by as much again.
            let _ = fs::remove_file(self.dir.join("snapshot.tmp"));
            warn!(error = %e, "metadata log: writing a snapshot failed; the log is kept");
            files.snapshot_records = files.log_records;
            return Ok(());
        }
        files.log.set_len(0)?;
        files.log.sync_all()?;
        info!(
            before = files.log_records,
            after = cmds.len(),
            "metadata log compacted into a snapshot"
        );
        files.log_len = 0;
        files.log_records = 0;
        files.snapshot_records = cmds.len() as u64;
        Ok(())
    }
}

fn write_snapshot(dir: &Path, covers: u64, cmds: &[Command]) -> std::io::Result<()> {
    let tmp = dir.join("snapshot.tmp");
    let mut buf = Vec::with_capacity(64 + cmds.len() * 160);
    record::put_record(&mut buf, SNAPSHOT, &[&covers.to_be_bytes()]);
    for c in cmds {
        command_record(&mut buf, 0, c);
    }
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join("snapshot"))?;
    sync_dir(dir)
}

impl MetaLog for FileLog {
    fn append(&self, cmd: &Command, committed: Committed) {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        command_record(&mut inner.pending, seq, cmd);
        inner.callbacks.push(committed);
        if let Some(me) = self.me.upgrade() {
            let me: Arc<dyn Flush> = me;
            let mut queued_for = inner.queued_for;
            self.syncer.register_first(&me, &mut queued_for);
            inner.queued_for = queued_for;
        }
    }

    fn set_snapshot_source(&self, source: SnapshotSource) {
        let _ = self.source.set(source);
    }
}

impl Flush for FileLog {
    fn flush(&self) -> std::io::Result<()> {
        let mut files = self.files.lock();
        let (bytes, callbacks, last_seq) = {
            let mut inner = self.inner.lock();
            (
                std::mem::take(&mut inner.pending),
                std::mem::take(&mut inner.callbacks),
                inner.next_seq - 1,
            )
        };
        if files.log_records >= COMPACT_MIN.max(2 * files.snapshot_records) {
            self.compact(&mut files)?;
        }
        if callbacks.is_empty() {
            return Ok(());
        }
        if let Err(e) = files.log.write_all(&bytes) {
            // Nothing of this round is applied; cut off whatever part of it reached the file.
            error!(error = %e, commands = callbacks.len(), "metadata log: write failed, the commands are refused");
            files.log.set_len(files.log_len)?;
            for cb in callbacks {
                cb(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            return Ok(());
        }
        files.log.sync_data()?;
        files.log_len += bytes.len() as u64;
        files.log_records += callbacks.len() as u64;
        files.written_seq = last_seq;
        drop(files);
        for cb in callbacks {
            cb(Ok(()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::QueueDef;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn queue(name: &str) -> Command {
        Command::DeclareQueue(QueueDef {
            vhost: "/".into(),
            name: name.into(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
            store_dir: format!("dir-{name}"),
            exclusive_owner: None,
        })
    }

    fn append_and_wait(log: &FileLog, syncer: &Syncer, cmd: &Command) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        log.append(
            cmd,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        syncer.barrier();
        rx.recv().expect("callback ran")
    }

    #[test]
    fn commands_are_replayed_in_order_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Syncer::start().expect("syncer");
        let (log, replay) = FileLog::open(dir.path(), syncer.clone(), None).expect("open");
        assert!(replay.is_empty());
        for n in ["a", "b", "c"] {
            append_and_wait(&log, &syncer, &queue(n)).expect("durable");
        }
        drop(log);
        let (_log, replay) = FileLog::open(dir.path(), syncer.clone(), None).expect("reopen");
        assert_eq!(replay, vec![queue("a"), queue("b"), queue("c")]);
        syncer.stop();
    }

    #[test]
    fn callbacks_run_in_log_order_after_the_round_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Syncer::start().expect("syncer");
        let (log, _) = FileLog::open(dir.path(), syncer.clone(), None).expect("open");
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let order = order.clone();
            log.append(
                &queue(&i.to_string()),
                Box::new(move |r| {
                    assert!(r.is_ok());
                    order.lock().push(i);
                }),
            );
        }
        syncer.barrier();
        assert_eq!(*order.lock(), (0..100).collect::<Vec<_>>());
        syncer.stop();
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Syncer::start().expect("syncer");
        let (log, _) = FileLog::open(dir.path(), syncer.clone(), None).expect("open");
        append_and_wait(&log, &syncer, &queue("kept")).expect("durable");
        drop(log);
        let path = dir.path().join("log");
        let mut bytes = fs::read(&path).expect("read");
        let whole = bytes.len();
        let mut torn = Vec::new();
        command_record(&mut torn, 99, &queue("torn"));
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        fs::write(&path, &bytes).expect("write");
        let (log, replay) = FileLog::open(dir.path(), syncer.clone(), None).expect("reopen");
        assert_eq!(replay, vec![queue("kept")]);
        assert_eq!(fs::metadata(&path).expect("meta").len() as usize, whole);
        append_and_wait(&log, &syncer, &queue("after")).expect("durable");
        drop(log);
        let (_, replay) = FileLog::open(dir.path(), syncer.clone(), None).expect("reopen");
        assert_eq!(replay, vec![queue("kept"), queue("after")]);
        syncer.stop();
    }

    #[test]
    fn compaction_writes_a_snapshot_and_replay_skips_what_it_covers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Syncer::start().expect("syncer");
        let (log, _) = FileLog::open(dir.path(), syncer.clone(), None).expect("open");
        let live = Arc::new(Mutex::new(Vec::<Command>::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        {
            let live = live.clone();
            let calls = calls.clone();
            log.set_snapshot_source(Box::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                live.lock().clone()
            }));
        }
        // Declare and delete the same queue over and over: the state stays one queue.
        let n = COMPACT_MIN as usize + 10;
        for i in 0..n {
            let q = queue(&format!("q{}", i % 2));
            let live2 = live.clone();
            let q2 = q.clone();
            log.append(
                &q,
                Box::new(move |r| {
                    assert!(r.is_ok());
                    let mut l = live2.lock();
                    l.clear();
                    l.push(q2);
                }),
            );
            if i % 500 == 0 {
                syncer.barrier();
            }
        }
        syncer.barrier();
        // One more round after the threshold triggers the compaction.
        append_and_wait(&log, &syncer, &queue("last")).expect("durable");
        assert!(calls.load(Ordering::SeqCst) >= 1, "compacted");
        let log_len = fs::metadata(dir.path().join("log")).expect("meta").len();
        assert!(log_len < 4096, "log truncated ({log_len} bytes)");
        drop(log);
        let (_, replay) = FileLog::open(dir.path(), syncer.clone(), None).expect("reopen");
        // The snapshot (the state before the last append) plus the log after it.
        assert_eq!(replay.last(), Some(&queue("last")));
        assert!(replay.len() <= 3, "{} commands replayed", replay.len());
        syncer.stop();
    }

    #[test]
    fn converted_commands_become_the_first_snapshot_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Syncer::start().expect("syncer");
        let (_, replay) =
            FileLog::open(dir.path(), syncer.clone(), Some(vec![queue("old")])).expect("open");
        assert_eq!(replay, vec![queue("old")]);
        let (_, replay) =
            FileLog::open(dir.path(), syncer.clone(), Some(vec![queue("other")])).expect("open");
        assert_eq!(replay, vec![queue("old")], "conversion happens once");
        syncer.stop();
    }
}
