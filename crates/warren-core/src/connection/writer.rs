//! The writer task: owns the socket's write half and writes whatever the connection task hands
//! it, batching chunks that queued up while a previous write was in progress.

use bytes::Bytes;
use std::io::IoSlice;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// A message for the writer.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// Bytes to write.
    Data(Bytes),
    /// Flush what is queued, then shut the socket down.
    Shutdown,
}

const MAX_BATCH: usize = 64;

pub(crate) async fn run(
    mut sock: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    flow: std::sync::Arc<super::Flow>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
    let mut shutdown = false;
    while !shutdown {
        match rx.recv().await {
            Some(WriterMsg::Data(b)) => batch.push(b),
            Some(WriterMsg::Shutdown) | None => shutdown = true,
        }
        while !shutdown && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(WriterMsg::Data(b)) => batch.push(b),
                Ok(WriterMsg::Shutdown) => shutdown = true,
                Err(_) => break,
            }
        }
        let n: usize = batch.iter().map(|b| b.len()).sum();
        let r = write_all_vectored(&mut sock, &mut batch).await;
        flow.written(n);
        if r.is_err() {
            // The peer is gone; the connection task notices on its read side.
            break;
        }
    }
    let _ = sock.shutdown().await;
}

async fn write_all_vectored(
    sock: &mut OwnedWriteHalf,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut idx = 0;
    while idx < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[idx..].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = sock.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < batch.len() {
            let len = batch[idx].len();
            if n >= len {
                n -= len;
                idx += 1;
            } else {
                let rest = batch[idx].slice(n..);
                batch[idx] = rest;
                n = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}
