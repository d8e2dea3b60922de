//! The writer task: writes whatever the connection task could not write at once, batching
//! chunks that queued up while a previous write was in progress.
//!
//! Over TCP the socket's write half is shared (`Arc<OwnedWriteHalf>`, whose `try_write*` take
//! `&self`): when nothing is pending, the connection task writes its output directly (one
//! syscall, no task wake-up on the latency path); only what the kernel does not take at once
//! goes through here. Order is kept because the connection writes directly only while the
//! writer has nothing. Any other byte stream (TLS, a Unix socket) cannot be written from two
//! tasks: its write half belongs to this task alone and every output goes through it.

use bytes::Bytes;
use std::io::IoSlice;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::flow::Flow;

/// A message for the writer.
#[derive(Debug)]
pub(crate) enum WriterMsg {
    /// Several pieces to write in order (headers and zero-copy message bodies).
    Chunks(Vec<Bytes>),
    /// Write what is queued, then stop (dropping the last handle shuts the socket down).
    Shutdown,
}

/// Takes the next batch (waiting for the first message); false once told to shut down.
async fn next_batch(rx: &mut mpsc::UnboundedReceiver<WriterMsg>, batch: &mut Vec<Bytes>) -> bool {
    let mut go_on = true;
    match rx.recv().await {
        Some(WriterMsg::Chunks(v)) => batch.extend(v),
        Some(WriterMsg::Shutdown) | None => go_on = false,
    }
    while go_on && batch.len() < 64 {
        match rx.try_recv() {
            Ok(WriterMsg::Chunks(v)) => batch.extend(v),
            Ok(WriterMsg::Shutdown) => go_on = false,
            Err(_) => break,
        }
    }
    go_on
}

/// The writer of a TCP connection (sharing the write half with the connection task).
pub(crate) async fn run_tcp(
    sock: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    flow: Arc<Flow>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        let go_on = next_batch(&mut rx, &mut batch).await;
        let n: usize = batch.iter().map(|b| b.len()).sum();
        let r = write_all_tcp(&sock, &mut batch).await;
        flow.written(n);
        if r.is_err() || !go_on {
            // On an error the peer is gone; the connection task notices on its read side.
            return;
        }
    }
}

/// The writer of any other byte stream: it owns the write half.
pub(crate) async fn run_stream<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    flow: Arc<Flow>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        let go_on = next_batch(&mut rx, &mut batch).await;
        let n: usize = batch.iter().map(|b| b.len()).sum();
        let mut r = Ok(());
        for b in batch.drain(..) {
            if r.is_ok() {
                r = w.write_all(&b).await;
            }
        }
        if r.is_ok() {
            r = w.flush().await;
        }
        flow.written(n);
        if r.is_err() || !go_on {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// Writes as much of `batch` as the socket takes now, without waiting; returns the bytes
/// written and drops the written chunks from the front of `batch`.
pub(crate) fn try_write_now(
    sock: &OwnedWriteHalf,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<usize> {
    let slices: Vec<IoSlice<'_>> = batch.iter().take(64).map(|b| IoSlice::new(b)).collect();
    let n = match sock.try_write_vectored(&slices) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    advance(batch, n);
    Ok(n)
}

fn advance(batch: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    while n > 0 && done < batch.len() {
        let len = batch[done].len();
        if n >= len {
            n -= len;
            done += 1;
        } else {
            let rest = batch[done].slice(n..);
            batch[done] = rest;
            n = 0;
        }
    }
    batch.drain(..done);
}

async fn write_all_tcp(sock: &OwnedWriteHalf, batch: &mut Vec<Bytes>) -> std::io::Result<()> {
    batch.retain(|b| !b.is_empty());
    while !batch.is_empty() {
        sock.writable().await?;
        if try_write_now(sock, batch)? == 0 && !batch.is_empty() {
            // Spurious readiness: wait again.
            continue;
        }
    }
    Ok(())
}
