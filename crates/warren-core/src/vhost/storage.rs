//! Where a vhost keeps durable queues' messages, recovery of those stores, and the snapshot
//! of the vhost's durable metadata (for the metadata log's compaction).
//!
//! A non-durable classic queue gets a spill store under `<vhost dir>/transient/` for its backlog
//! beyond the in-memory limit; that directory is removed at startup.
//!
//! Each durable queue incarnation has its own directory under `<vhost dir>/queues/`, named
//! when the queue is declared (the name is part of the logged command) and created by the
//! store's first flush in the sync thread, so a declaration touches no disk on the event loop.
//! At startup the directory list is read once; replayed declarations claim their directories,
//! and what nobody claims (a queue deleted before a crash finished removing it) is removed.
//! A durable delayed-message exchange's store lives there too, in a directory named `dx-...`
//! (its declaration names it the same way).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

use super::{is_default_exchange, VHost};
use crate::exchange::Destination;
use crate::metadata::{BindingDef, Command, ExchangeDef, QueueDef};
use crate::queue::{Backing, QueueArgs, QueueKind};
use crate::store::segment::SegmentStore;
use crate::store::stream::{StreamLog, DEFAULT_SEGMENT_SIZE};
use crate::store::sync::Syncer;
use crate::store::StoreRef;

/// Where a vhost keeps durable state.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The vhost's directory.
    pub dir: PathBuf,
    /// The group-commit service.
    pub syncer: Arc<Syncer>,
    /// Size at which a queue's segment file is rotated.
    pub segment_size: u64,
    /// Ready messages a durable queue keeps in memory before paging the rest to disk
    /// (0 = never page).
    pub memory_limit: usize,
}

impl Storage {
    fn queues_dir(&self) -> PathBuf {
        self.dir.join("queues")
    }

    /// Where non-durable queues keep their spill stores (removed at startup).
    fn spill_dir(&self) -> PathBuf {
        self.dir.join("transient")
    }

    /// The store directories present now (startup). Spill stores of the previous run are
    /// removed: nothing of a non-durable queue survives a restart.
    pub(super) fn existing_dirs(&self) -> std::io::Result<HashSet<String>> {
        match std::fs::remove_dir_all(self.spill_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let dir = self.queues_dir();
        std::fs::create_dir_all(&dir)?;
        let mut out = HashSet::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            out.insert(e.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
}

/// FNV-1a, for short stable directory names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A fresh store directory name for a new incarnation of queue `name`: a queue deleted and
/// declared again never sees its predecessor's files.
pub fn new_store_dir(name: &str) -> String {
    format!("{:016x}-{}", fnv1a(name.as_bytes()), super::random_suffix())
}

impl VHost {
    /// Whether this vhost keeps durable state on disk.
    pub fn persistent(&self) -> bool {
        self.storage.is_some()
    }

    /// The store of a durable queue incarnation (a message store, or a stream's log): opened
    /// (recovering its messages) when a previous run left its directory, otherwise new
    /// (nothing touches the disk now).
    pub(super) fn backing_for(
        &self,
        store_dir: &str,
        args: &QueueArgs,
    ) -> std::io::Result<Backing> {
        let Some(s) = &self.storage else {
            return Ok(Backing::None);
        };
        if args.kind == QueueKind::Stream {
            let path = s.queues_dir().join(store_dir);
            let existed = self.claim(store_dir);
            let max = args.stream_max_segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE);
            let log = if existed {
                StreamLog::open(&path, s.syncer.clone(), max)?
            } else {
                StreamLog::create(&path, s.syncer.clone(), max)
            };
            return Ok(Backing::Stream(log));
        }
        Ok(match self.store_with_limit(store_dir, s.memory_limit)? {
            Some(store) => Backing::Store(store),
            None => Backing::None,
        })
    }

    /// The spill store of a new non-durable classic queue `name` (none without a data dir, or
    /// with paging off): nothing touches the disk until its backlog pages out.
    pub(super) fn spill_for(&self, name: &str) -> Backing {
        match &self.storage {
            Some(s) if s.memory_limit > 0 => Backing::Spill(SegmentStore::spill(
                &s.spill_dir().join(new_store_dir(name)),
                s.syncer.clone(),
                s.segment_size,
                s.memory_limit,
            )),
            _ => Backing::None,
        }
    }

    /// A message store in `store_dir`, recovering at most `memory_limit` messages into memory
    /// (0: all; a delayed exchange holds all of its messages in due order).
    pub(super) fn store_with_limit(
        &self,
        store_dir: &str,
        memory_limit: usize,
    ) -> std::io::Result<Option<StoreRef>> {
        let Some(s) = &self.storage else {
            return Ok(None);
        };
        let path = s.queues_dir().join(store_dir);
        let store = if self.claim(store_dir) {
            SegmentStore::open(&path, s.syncer.clone(), s.segment_size, memory_limit)?
        } else {
            SegmentStore::create(&path, s.syncer.clone(), s.segment_size, memory_limit)
        };
        Ok(Some(store as StoreRef))
    }

    /// Whether a previous run left `store_dir` (recovery has not finished and no other
    /// incarnation claimed it); claims it.
    fn claim(&self, store_dir: &str) -> bool {
        self.unclaimed
            .lock()
            .as_mut()
            .is_some_and(|u| u.remove(store_dir))
    }

    /// Ends recovery: store directories no replayed queue claimed are garbage.
    pub fn finish_recovery(&self) {
        let Some(unclaimed) = self.unclaimed.lock().take() else {
            return;
        };
        let Some(s) = &self.storage else { return };
        for d in &unclaimed {
            if let Err(e) = std::fs::remove_dir_all(s.queues_dir().join(d)) {
                warn!(dir = %d, error = %e, "cannot remove the store of a deleted queue");
            }
        }
        let topo = self.topo.read();
        info!(
            vhost = %self.name,
            exchanges = topo.exchanges.len() - super::DEFAULT_EXCHANGES.len(),
            queues = topo.queues.len(),
            removed_stores = unclaimed.len(),
            "recovered durable definitions"
        );
    }

    /// The commands that rebuild this vhost's durable metadata.
    pub fn snapshot(&self) -> Vec<Command> {
        let topo = self.topo.read();
        let vhost = self.name.to_string();
        let mut out = Vec::new();
        let durable_queue = |n: &str| {
            topo.queues
                .get(n)
                .is_some_and(|q| q.options().durable && q.options().exclusive_owner.is_none())
        };
        for x in topo.exchanges.values() {
            if x.durable && !is_default_exchange(&x.name) {
                out.push(Command::DeclareExchange(ExchangeDef {
                    vhost: vhost.clone(),
                    name: x.name.to_string(),
                    kind: x.kind.as_str().into(),
                    durable: true,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                    store_dir: x.store_dir.clone().unwrap_or_default(),
                }));
            }
        }
        for q in topo.queues.values() {
            let i = q.info();
            if let (true, None, Some(dir)) = (
                i.options.durable,
                i.options.exclusive_owner,
                i.store_dir.as_ref(),
            ) {
                out.push(Command::DeclareQueue(QueueDef {
                    vhost: vhost.clone(),
                    name: i.name.to_string(),
                    durable: true,
                    auto_delete: i.options.auto_delete,
                    arguments: i.options.arguments.clone(),
                    store_dir: dir.clone(),
                    exclusive_owner: None,
                }));
            }
        }
        for x in topo.exchanges.values() {
            if !x.durable {
                continue;
            }
            for b in x.bindings() {
                let (dest, ty, durable) = match &b.destination {
                    Destination::Queue(q) => (q, "queue", durable_queue(q)),
                    Destination::Exchange(e) => (
                        e,
                        "exchange",
                        topo.exchanges.get(&**e).is_some_and(|x| x.durable),
                    ),
                };
                if durable {
                    out.push(Command::Bind(BindingDef {
                        vhost: vhost.clone(),
                        source: x.name.to_string(),
                        destination: dest.to_string(),
                        destination_type: ty.into(),
                        routing_key: b.routing_key,
                        arguments: b.arguments,
                    }));
                }
            }
        }
        out
    }
}
