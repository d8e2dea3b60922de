//! The durable topology as data dirs before the metadata log kept it: one
//! `vhosts/<hex name>/definitions.json` per vhost, rewritten whole on every change. Read once
//! at startup and converted into metadata commands (the log's first snapshot); the file is
//! then renamed `definitions.json.converted`.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::{BindingDef, Command, ExchangeDef, QueueDef};
use warren_codec::proto::FieldTable;

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyExchange {
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyQueue {
    /// Name.
    pub name: String,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
    /// Directory of its message store under the vhost's `queues/`.
    pub store_dir: String,
}

/// A binding between durable entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyBinding {
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// Routing key.
    pub routing_key: String,
    /// Arguments.
    pub arguments: FieldTable,
}

/// Everything durable in a vhost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    /// Exchanges (not the pre-declared ones).
    pub exchanges: Vec<LegacyExchange>,
    /// Queues.
    pub queues: Vec<LegacyQueue>,
    /// Bindings.
    pub bindings: Vec<LegacyBinding>,
}

const FILE: &str = "definitions.json";

impl Definitions {
    /// Reads `dir/definitions.json`; empty when missing.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes `dir/definitions.json` atomically and durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join("definitions.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(FILE))?;
        File::open(dir)?.sync_all()
    }
}

impl Definitions {
    /// The commands that rebuild these definitions in `vhost`.
    pub fn commands(&self, vhost: &str) -> Vec<Command> {
        let mut out = Vec::new();
        for x in &self.exchanges {
            out.push(Command::DeclareExchange(ExchangeDef {
                vhost: vhost.into(),
                name: x.name.clone(),
                kind: x.kind.clone(),
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments.clone(),
                store_dir: String::new(),
            }));
        }
        for q in &self.queues {
            out.push(Command::DeclareQueue(QueueDef {
                vhost: vhost.into(),
                name: q.name.clone(),
                durable: true,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
                store_dir: q.store_dir.clone(),
                exclusive_owner: None,
            }));
        }
        for b in &self.bindings {
            out.push(Command::Bind(BindingDef {
                vhost: vhost.into(),
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_type: b.destination_type.clone(),
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
            }));
        }
        out
    }
}

/// Reads `dir/definitions.json` of vhost `vhost` for conversion, if there is one (`None`:
/// nothing to convert). The caller renames it with [`retire`] once the converted commands
/// are durable.
pub fn convert(dir: &Path, vhost: &str) -> std::io::Result<Option<Vec<Command>>> {
    if !dir.join(FILE).exists() {
        return Ok(None);
    }
    Ok(Some(Definitions::load(dir)?.commands(vhost)))
}

/// Renames a converted `definitions.json` out of the way.
pub fn retire(dir: &Path) -> std::io::Result<()> {
    let from = dir.join(FILE);
    if from.exists() {
        fs::rename(&from, dir.join("definitions.json.converted"))?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
