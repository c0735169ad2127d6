//! A message's bytes in the pieces they arrived in.
//!
//! HTTP/2 carries a request in DATA frames of at most 16 KiB (Envoy never sends larger ones),
//! and a state-of-the-world EDS ACK repeating 1,200 cluster names spans four of them. Joining
//! the frames into one buffer copied every ACK once more; kept as the frames' own slices, an
//! ACK that repeats its subscription is read where it lies (`SotwRequest::decode_segments_knowing`)
//! and only other requests are joined.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;

/// One message's bytes: the non-empty pieces they arrived in, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segments {
    parts: Vec<Bytes>,
    len: usize,
}

impl Segments {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes as one buffer: the piece itself when there is one, else a copy of them all.
    pub fn contiguous(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.parts) {
            Ok([only]) => only,
            Err(parts) => {
                let mut joined = BytesMut::with_capacity(self.len);
                for part in parts {
                    joined.extend_from_slice(&part);
                }
                joined.freeze()
            }
        }
    }

    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    /// A reader over the bytes, from the start.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            parts: &self.parts,
            offset: 0,
            remaining: self.len,
        }
    }
}

impl From<Bytes> for Segments {
    fn from(bytes: Bytes) -> Self {
        let mut segments = Segments::default();
        segments.push(bytes);
        segments
    }
}

/// Pieces received but not yet taken as messages: a message's tail and the next one's head can
/// share a piece.
#[derive(Debug, Default)]
pub struct Pending {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push_back(part);
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.parts.capacity()
    }

    /// The first `N` bytes, if that many are pending.
    pub fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.len < N {
            return None;
        }
        let mut out = [0; N];
        let mut filled = 0;
        for part in &self.parts {
            let n = part.len().min(N - filled);
            out[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
            if filled == N {
                break;
            }
        }
        Some(out)
    }

    /// Drops the first `n` bytes.
    ///
    /// # Panics
    /// When fewer than `n` are pending.
    pub fn skip(&mut self, mut n: usize) {
        assert!(n <= self.len, "skipping {n} of {} pending bytes", self.len);
        self.len -= n;
        // Piece by piece, without collecting them: this drops every message's 5-byte prefix.
        while n > 0 {
            let front = self.parts.front_mut().expect("pending bytes are in parts");
            if front.len() <= n {
                n -= front.len();
                self.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Takes the first `n` bytes, without copying them.
    ///
    /// # Panics
    /// When fewer than `n` are pending.
    pub fn take(&mut self, mut n: usize) -> Segments {
        assert!(n <= self.len, "taking {n} of {} pending bytes", self.len);
        self.len -= n;
        let mut taken = Segments::default();
        while n > 0 {
            let front = self.parts.front_mut().expect("pending bytes are in parts");
            if front.len() <= n {
                n -= front.len();
                taken.push(self.parts.pop_front().expect("front exists"));
            } else {
                taken.push(front.split_to(n));
                n = 0;
            }
        }
        if self.parts.is_empty() {
            // Let the queue's allocation go between messages.
            self.parts = VecDeque::new();
        }
        taken
    }
}

/// A [`Buf`] over [`Segments`], which can also compare what lies ahead without reading it.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    /// Pieces from the current one on.
    parts: &'a [Bytes],
    /// Read so far of `parts[0]`.
    offset: usize,
    remaining: usize,
}

impl Cursor<'_> {
    /// Whether the bytes ahead begin with `prefix`.
    pub fn starts_with(&self, mut prefix: &[u8]) -> bool {
        if prefix.len() > self.remaining {
            return false;
        }
        let mut offset = self.offset;
        for part in self.parts {
            let here = &part[offset..];
            let n = here.len().min(prefix.len());
            if here[..n] != prefix[..n] {
                return false;
            }
            prefix = &prefix[n..];
            if prefix.is_empty() {
                return true;
            }
            offset = 0;
        }
        prefix.is_empty()
    }

    /// The next byte, not read.
    pub fn peek_u8(&self) -> Option<u8> {
        self.has_remaining().then(|| self.chunk()[0])
    }
}

impl Buf for Cursor<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts
            .first()
            .map_or(&[][..], |part| &part[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advancing past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let left = self.parts[0].len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                return;
            }
            cnt -= left;
            // Past a whole piece (pieces are never empty, so `chunk` never is while bytes
            // remain).
            self.parts = &self.parts[1..];
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_of(pieces: &[&[u8]]) -> Pending {
        let mut pending = Pending::default();
        for piece in pieces {
            pending.push(Bytes::copy_from_slice(piece));
        }
        pending
    }

    #[test]
    fn taking_splits_pieces_without_joining_them() {
        let mut pending = pending_of(&[b"abc", b"", b"defg", b"hi"]);
        assert_eq!(pending.len(), 9);
        assert_eq!(pending.peek::<5>(), Some(*b"abcde"));
        assert_eq!(pending.peek::<10>(), None);
        let first = pending.take(5);
        assert_eq!(first.parts(), [&b"abc"[..], &b"de"[..]]);
        assert_eq!(first.contiguous(), &b"abcde"[..]);
        let rest = pending.take(4);
        assert_eq!(rest.parts(), [&b"fg"[..], &b"hi"[..]]);
        assert!(pending.is_empty());
        assert_eq!(Segments::from(Bytes::from_static(b"x")).contiguous(), "x");
    }

    #[test]
    fn a_cursor_reads_and_compares_across_pieces() {
        let segments = pending_of(&[b"ab", b"cde", b"f"]).take(6);
        let mut cursor = segments.cursor();
        assert!(cursor.starts_with(b"abcdef"));
        assert!(cursor.starts_with(b"abc"));
        assert!(!cursor.starts_with(b"abd"));
        assert!(!cursor.starts_with(b"abcdefg"));
        cursor.advance(2);
        assert_eq!(cursor.chunk(), b"cde");
        assert!(cursor.starts_with(b"cdef"));
        cursor.advance(1);
        assert_eq!(cursor.peek_u8(), Some(b'd'));
        assert_eq!(cursor.get_u8(), b'd');
        assert_eq!(cursor.get_u16(), u16::from_be_bytes(*b"ef"));
        assert_eq!(cursor.remaining(), 0);
        assert_eq!(cursor.chunk(), b"");
        assert_eq!(cursor.peek_u8(), None);
        assert!(cursor.starts_with(b""));
    }
}
