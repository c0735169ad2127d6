//! A connection that reads a large message in two system calls instead of one per HTTP/2 frame.
//!
//! The HTTP/2 codec asks the socket for little more than the frame it is reading, and Envoy
//! sends 16 KiB DATA frames. A state-of-the-world EDS ACK repeats every subscribed cluster
//! name, 55 KB in a mesh of 1,000 services, and each cost about seven `recvfrom` calls: a fifth
//! of the server's time under endpoint churn. When a read fills the codec's buffer,
//! more is probably waiting: [`ReadAhead`] takes it at once into a short-lived buffer and
//! serves the codec's next reads from there. A read that does not fill the buffer (every
//! delta request, every small ACK) goes straight through, with no copy.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one read ahead takes: a few SotW ACKs' worth, and the most a loopback segment
/// carries.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// A byte stream whose reads take what is waiting beyond the caller's buffer (see the module).
pub struct ReadAhead<T> {
    inner: T,
    /// Read ahead and not yet given to the caller; empty (and unallocated) almost always.
    ahead: Bytes,
    /// A read ahead failed after the caller had its bytes; reported on its next read.
    failed: Option<io::Error>,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            ahead: Bytes::new(),
            failed: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            if this.ahead.is_empty() {
                // Free the buffer now rather than with the next read ahead.
                this.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read == 0 || buf.remaining() > 0 {
            // End of stream, or a short read: nothing more was waiting.
            return Poll::Ready(Ok(()));
        }
        let mut ahead = BytesMut::with_capacity(READ_AHEAD_BYTES);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut ahead) {
            Poll::Ready(Ok(_)) => this.ahead = ahead.freeze(),
            Poll::Ready(Err(error)) => this.failed = Some(error),
            // Nothing more after all; the waker is registered and the caller reads again anyway.
            Poll::Pending => {}
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads into a buffer of `size` until `want` bytes came, counting the reads that
    /// returned data.
    async fn read_in<T: AsyncRead + Unpin>(io: &mut T, size: usize, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = vec![0; size];
        while got.len() < want {
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stream ended after {} of {want} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_large_message_arrives_whole_and_in_order_through_small_reads() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let message: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&message).await.unwrap();
        let mut reader = ReadAhead::new(reader);
        let got = read_in(&mut reader, 8 * 1024, message.len()).await;
        assert_eq!(got, message);
        assert!(reader.ahead.is_empty());
    }

    #[tokio::test]
    async fn a_filled_read_takes_what_waits_behind_it_in_one_read() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        writer.write_all(&[7; 40_000]).await.unwrap();
        let mut reader = ReadAhead::new(reader);
        let mut first = [0; 16 * 1024];
        assert_eq!(reader.read(&mut first).await.unwrap(), first.len());
        assert_eq!(
            reader.ahead.len(),
            40_000 - first.len(),
            "the rest read ahead"
        );
        // Nothing more is written, yet the rest is there without waiting for the writer.
        let rest = read_in(&mut reader, 16 * 1024, 40_000 - first.len()).await;
        assert!(rest.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_short_read_goes_straight_through() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        writer.write_all(b"ack").await.unwrap();
        let mut reader = ReadAhead::new(reader);
        let mut buf = [0; 64];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 3);
        assert!(reader.ahead.is_empty());
        drop(writer);
        assert_eq!(reader.read(&mut buf).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut ours = ReadAhead::new(ours);
        ours.write_all(b"push").await.unwrap();
        ours.flush().await.unwrap();
        let mut buf = [0; 4];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"push");
    }
}
