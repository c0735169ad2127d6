//! A socket whose writes are gathered until the writer flushes, then written in as few system
//! calls as the socket takes.
//!
//! h2 writes each large DATA frame with a system call of its own, so a state-of-the-world EDS
//! ACK (55 KB of repeated names in the bench mesh, four 16 KiB frames) took three to four
//! `writev` calls, each a TCP segment through the whole loopback path of both processes.
//! Envoy's codec serializes frames into the connection's buffer and the connection writes it
//! in one go when the event loop turns, so one ACK is one write; [`WriteBatch`] makes the
//! simulated sidecars write the same way.
//!
//! h2 also flushes after each large frame, so a flush right after a large write only asks to
//! be polled again (a turn of the task); the next flush writes everything out. That relies on
//! the writer flushing whenever it is polled, as h2's connection task does; a writer that
//! flushes once and then only reads (a TLS handshake) would leave its bytes here. Small writes
//! (a delta ACK, a SotW ACK of few names) are flushed at once, as h2 writes them in one go.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Gathered bytes past which a write first waits for the socket to take them.
const MAX_GATHERED: usize = 256 * 1024;

/// A write at least this large is a DATA frame h2 wrote on its own (h2 copies smaller frames
/// into one buffer and writes them together): more may follow in this turn.
const LARGE_WRITE: usize = 4096;

pub struct WriteBatch<T> {
    inner: T,
    /// Written by the caller, not yet by the socket; unallocated between flushes.
    gathered: BytesMut,
    /// A large write came since the last flush: the writer may have more for this turn.
    flush_next_turn: bool,
}

impl<T> WriteBatch<T> {
    pub fn new(inner: T) -> Self {
        WriteBatch {
            inner,
            gathered: BytesMut::new(),
            flush_next_turn: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> WriteBatch<T> {
    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.gathered.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.gathered))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.gathered.advance(written);
        }
        // Let the allocation go rather than hold it per connection between ACKs.
        self.gathered = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteBatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteBatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.gathered.len() >= MAX_GATHERED {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for buf in bufs {
            this.gathered.extend_from_slice(buf);
            taken += buf.len();
        }
        if taken >= LARGE_WRITE {
            this.flush_next_turn = true;
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.flush_next_turn) {
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A sink counting the write calls it sees.
    struct Counting {
        written: Vec<u8>,
        calls: Arc<AtomicUsize>,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls.fetch_add(1, Ordering::Relaxed);
            this.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_before_a_flush_reach_the_socket_in_one_write() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut io = WriteBatch::new(Counting {
            written: Vec::new(),
            calls: calls.clone(),
        });
        for frame in 0..4u8 {
            io.write_all(&[frame; 16 * 1024]).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::Relaxed), 0, "nothing before the flush");
        io.flush().await.unwrap();
        let after_large = calls.load(Ordering::Relaxed);
        io.write_all(&[4; 100]).await.unwrap();
        io.flush().await.unwrap();
        let next_turn = calls.load(Ordering::Relaxed);
        io.write_all(&[5; 100]).await.unwrap();
        io.flush().await.unwrap();
        let small = calls.load(Ordering::Relaxed);
        assert_eq!(
            (after_large, next_turn, small),
            (0, 1, 2),
            "a flush after large writes waits a turn, the next writes everything at once, \
             and small writes are flushed at once"
        );
        let mut expected: Vec<u8> = (0..4u8).flat_map(|f| [f; 16 * 1024]).collect();
        expected.extend_from_slice(&[4; 100]);
        expected.extend_from_slice(&[5; 100]);
        assert_eq!(io.inner.written, expected);
        assert_eq!(io.gathered.capacity(), 0, "nothing held after the flush");
    }

    #[tokio::test]
    async fn a_slow_socket_gets_everything_in_order_and_reads_pass_through() {
        // A pipe smaller than what is gathered: the flush waits for the reader.
        let (ours, mut peer) = tokio::io::duplex(4 * 1024);
        let mut ours = WriteBatch::new(ours);
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 100_000];
            peer.read_exact(&mut got).await.unwrap();
            peer.write_all(b"ack").await.unwrap();
            got
        });
        ours.write_all(&message).await.unwrap();
        ours.flush().await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), message);
        let mut ack = [0; 3];
        ours.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"ack");
    }
}
