//! A socket whose writes are gathered until the writer flushes, then written in one go.
//!
//! h2 writes each DATA frame of a message with a system call of its own, flushing before it
//! takes the next, so a state-of-the-world EDS ACK (55 KB of repeated names in the bench mesh,
//! four 16 KiB frames) took three to four `writev` calls, each a TCP segment through the whole
//! loopback path of both processes. Envoy's codec serializes frames into the connection's
//! buffer and writes it once per turn of its event loop; [`WriteBatch`] makes the simulated
//! sidecars write the same way. A flush right after a full-size frame only asks for the task
//! to be polled again, since the message may go on; the flush after its last, shorter frame
//! writes everything gathered at once.
//!
//! Gathered bytes are not left behind: they are written at the next flush, write past the
//! gathering limit, shutdown, or read (a writer that waits for an answer has sent its
//! question), and a deferred flush wakes the task so that one of those comes.
//!
//! The server does not gather (tried in sessions 17 and 18): it saved write calls, but a
//! connection whose reader is slow could hold up to the gathering limit on top of the
//! response body's own bound (`ResponseBody::MAX_IN_FLIGHT`), and the cold connect of 5,000
//! sidecars peaked at 659 MiB instead of ~250.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Gathered bytes past which a write first waits for the socket to take them.
const MAX_GATHERED: usize = 256 * 1024;

/// A write at least this large holds a full-size DATA frame (HTTP/2's default maximum payload,
/// which Envoy keeps, and the 9-byte frame header): the message may have more frames.
const FULL_FRAME: usize = 16 * 1024 + 9;

/// Room made at once when gathering starts with a full-size frame: its message probably goes
/// on (a SotW EDS ACK in the bench mesh is four frames), and growing the buffer by doubling
/// copied what was gathered twice per ACK.
const ROOM_AFTER_FULL_FRAME: usize = 4 * FULL_FRAME;

pub struct WriteBatch<T> {
    inner: T,
    /// Written by the caller, not yet by the socket; unallocated between flushes.
    gathered: BytesMut,
    /// A full frame came since the last flush: the writer may have more of its message.
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
        // Let the allocation go rather than hold it per connection between messages.
        self.gathered = BytesMut::new();
        self.flush_next_turn = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for WriteBatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A writer waiting for an answer to what it wrote must have sent it. If the socket is
        // full, the bytes stay, and its readiness wakes this task to read (and drain) again.
        if !this.gathered.is_empty()
            && let Poll::Ready(Err(error)) = this.poll_drain(cx)
        {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
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
        let taken: usize = bufs.iter().map(|buf| buf.len()).sum();
        if taken >= FULL_FRAME {
            if this.gathered.is_empty() {
                this.gathered.reserve(ROOM_AFTER_FULL_FRAME);
            }
            this.flush_next_turn = true;
        }
        for buf in bufs {
            this.gathered.extend_from_slice(buf);
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
    use std::time::Duration;
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

    fn counting() -> (WriteBatch<Counting>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let io = WriteBatch::new(Counting {
            written: Vec::new(),
            calls: calls.clone(),
        });
        (io, calls)
    }

    #[tokio::test]
    async fn a_message_of_several_frames_reaches_the_socket_in_one_write() {
        let (mut io, calls) = counting();
        // As h2 writes a 56 KB message: each full frame flushed on its own, then the rest.
        let frames: Vec<Vec<u8>> = (0..3u8)
            .map(|f| vec![f; FULL_FRAME])
            .chain([vec![3; 7_000]])
            .collect();
        let mut room = None;
        for frame in &frames[..3] {
            io.write_all(frame).await.unwrap();
            io.flush().await.unwrap();
            assert_eq!(calls.load(Ordering::Relaxed), 0, "a full frame waits");
            let capacity = io.gathered.capacity();
            assert!(capacity >= ROOM_AFTER_FULL_FRAME, "room made up front");
            assert_eq!(*room.get_or_insert(capacity), capacity, "never regrown");
        }
        io.write_all(&frames[3]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "the last frame sends all");
        assert_eq!(io.inner.written, frames.concat());
        assert_eq!(io.gathered.capacity(), 0, "nothing held after the flush");

        io.write_all(&[4; 100]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "a small write goes at once"
        );
    }

    #[tokio::test]
    async fn a_message_ending_on_a_full_frame_goes_on_the_next_flush() {
        let (mut io, calls) = counting();
        io.write_all(&[1; FULL_FRAME]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        io.flush().await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(io.inner.written, vec![1; FULL_FRAME]);
    }

    #[tokio::test]
    async fn a_read_sends_what_was_written_before_it() {
        // A writer that flushes once, then waits for the answer (as a TLS handshake does).
        let (ours, mut peer) = tokio::io::duplex(64 * 1024);
        let mut ours = WriteBatch::new(ours);
        let flight = vec![7; FULL_FRAME + 100];
        ours.write_all(&flight).await.unwrap();
        ours.flush().await.unwrap();
        let answer = tokio::spawn(async move {
            let mut got = vec![0; FULL_FRAME + 100];
            peer.read_exact(&mut got).await.unwrap();
            peer.write_all(b"ok").await.unwrap();
            got
        });
        let mut reply = [0; 2];
        tokio::time::timeout(Duration::from_secs(5), ours.read_exact(&mut reply))
            .await
            .expect("the peer got the flight and answered")
            .unwrap();
        assert_eq!(&reply, b"ok");
        assert_eq!(answer.await.unwrap(), flight);
    }

    #[tokio::test]
    async fn a_slow_socket_gets_everything_in_order() {
        // A pipe smaller than what is gathered: the flush waits for the reader.
        let (ours, mut peer) = tokio::io::duplex(4 * 1024);
        let mut ours = WriteBatch::new(ours);
        let message: Vec<u8> = (0..400_000u32).map(|i| (i % 253) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 400_000];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        for chunk in message.chunks(FULL_FRAME) {
            ours.write_all(chunk).await.unwrap();
            ours.flush().await.unwrap();
        }
        ours.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), message);
    }
}
