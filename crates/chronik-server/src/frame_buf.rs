//! Response frames as a list of chunks, so that record data read from the WAL reaches the socket without
//! being copied again: the protocol encoder writes into a [`ChunkedBuf`], which copies small fields into
//! its current buffer but emits every registered record set (a Fetch partition's stored batches) as
//! chunks of its own, handed to the socket with vectored writes.
//!
//! A Fetch partition's records field is one `Bytes` in the protocol crate, but its batches are separate
//! slices of the WAL's read buffers (frame headers sit between them on disk). [`RecordSets::add`] gives the
//! response a stand-in of the right length (zeroed, never written or read) and remembers the slices;
//! when the encoder copies the stand-in, the slices are emitted instead. One record set of one batch
//! needs no stand-in: its own bytes are recognised.
//!
//! The record data a frame holds stays accounted in its [`MemoryShare`] (`fetch_memory.rs`) until the
//! frame has been written or dropped.

use bytes::{buf::UninitSlice, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

use crate::fetch_memory::MemoryShare;

/// Record sets to emit without copying, keyed by the address of the bytes the encoder will be given.
#[derive(Debug, Default)]
pub struct RecordSets {
    sets: Vec<(usize, usize, Vec<Bytes>)>,
    /// The memory the record data is accounted in, kept until the frame is dropped.
    share: Option<MemoryShare>,
}

impl RecordSets {
    /// Keeps `share` with the response until its frame has been written or dropped.
    pub fn hold(&mut self, share: MemoryShare) {
        self.share = Some(share);
    }

    /// The `Bytes` to put in the response for `batches`; on encoding, `batches` themselves are emitted.
    pub fn add(&mut self, batches: Vec<Bytes>) -> Bytes {
        let stand_in = match batches.as_slice() {
            [] => return Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(vec![0u8; many.iter().map(Bytes::len).sum()]),
        };
        self.sets
            .push((stand_in.as_ptr() as usize, stand_in.len(), batches));
        stand_in
    }

    fn take(&mut self, src: &[u8]) -> Option<Vec<Bytes>> {
        let at = self
            .sets
            .iter()
            .position(|(ptr, len, _)| *ptr == src.as_ptr() as usize && *len == src.len())?;
        Some(self.sets.swap_remove(at).2)
    }
}

/// A growing frame made of copied small parts and zero-copy record chunks.
#[derive(Debug, Default)]
pub struct ChunkedBuf {
    done: Vec<Bytes>,
    /// Bytes in `done`.
    done_len: usize,
    cur: BytesMut,
    sets: RecordSets,
}

impl ChunkedBuf {
    pub fn new(sets: RecordSets) -> Self {
        Self {
            sets,
            ..Default::default()
        }
    }

    /// The frame's chunks, in order, with the memory share of its record data.
    pub fn finish(mut self) -> Frame {
        if !self.cur.is_empty() {
            self.done.push(self.cur.freeze());
        }
        Frame {
            chunks: self.done,
            _share: self.sets.share,
        }
    }

    /// The part being written: for encoders that take a `BytesMut` (responses with no record sets).
    pub fn current_mut(&mut self) -> &mut BytesMut {
        &mut self.cur
    }

    /// Overwrites the frame's first four bytes (the length prefix written as a placeholder first).
    pub fn set_prefix(&mut self, prefix: [u8; 4]) {
        match self.done.first_mut() {
            Some(first) if first.len() >= 4 => {
                // Frozen already: rebuild this small copied part with the prefix in place.
                let mut head = BytesMut::from(&first[..]);
                head[..4].copy_from_slice(&prefix);
                *first = head.freeze();
            }
            _ => self.cur[..4].copy_from_slice(&prefix),
        }
    }

    pub fn len(&self) -> usize {
        self.done_len + self.cur.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response frame ready for the socket.
#[derive(Debug)]
pub struct Frame {
    /// The frame's bytes, in order.
    pub chunks: Vec<Bytes>,
    /// Given back to the budget when the frame is dropped, with its chunks.
    _share: Option<MemoryShare>,
}

/// A frame reads as its chunks.
impl std::ops::Deref for Frame {
    type Target = [Bytes];
    fn deref(&self) -> &[Bytes] {
        &self.chunks
    }
}

// SAFETY: every method delegates to `BytesMut`, whose implementation upholds the trait's contract
// (`chunk_mut` returns writable memory of the current buffer; `advance_mut` is called only after the
// caller initialised those bytes). `put_slice` is overridden with safe code only.
#[allow(unsafe_code)]
unsafe impl BufMut for ChunkedBuf {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded unchanged; the caller's guarantee about `cnt` is about `cur`'s chunk.
        unsafe { self.cur.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.cur.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.sets.take(src) {
            Some(batches) => {
                // The first copied part keeps the length prefix: never flush it empty.
                let cur = std::mem::take(&mut self.cur);
                self.done_len += cur.len();
                self.done.push(cur.freeze());
                for b in batches {
                    self.done_len += b.len();
                    self.done.push(b);
                }
            }
            None => self.cur.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for ChunkedBuf {
    fn offset(&self) -> usize {
        self.len()
    }

    fn seek(&mut self, offset: usize) {
        // Only moves within the current part: the encoder seeks forward over gaps it fills later.
        let local = offset.saturating_sub(self.done_len);
        self.cur.resize(local, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.done_len);
        let end = r.end.saturating_sub(self.done_len);
        &mut self.cur[start..end]
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::{
        messages::{
            fetch_response::{FetchableTopicResponse, PartitionData},
            FetchResponse, TopicName,
        },
        protocol::{Encodable, StrBytes},
    };

    use super::*;

    fn response(records: Vec<Bytes>) -> FetchResponse {
        FetchResponse::default().with_responses(
            records
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![PartitionData::default()
                            .with_partition_index(i as i32)
                            .with_records(Some(r))])
                })
                .collect(),
        )
    }

    #[test]
    fn chunked_encoding_matches_plain_encoding_without_copying_records() {
        let backing = Bytes::from((0..=255u8).cycle().take(9000).collect::<Vec<u8>>());
        let sets = [
            vec![backing.slice(0..3000)],
            vec![backing.slice(3000..4000), backing.slice(4100..9000)],
            vec![],
        ];
        for version in [4, 11, 12, 16] {
            let concatenated: Vec<Bytes> = sets.iter().map(|s| Bytes::from(s.concat())).collect();
            let mut plain = BytesMut::new();
            response(concatenated).encode(&mut plain, version).unwrap();

            let mut registry = RecordSets::default();
            let stand_ins = sets.iter().map(|s| registry.add(s.clone())).collect();
            let mut buf = ChunkedBuf::new(registry);
            response(stand_ins).encode(&mut buf, version).unwrap();
            assert_eq!(buf.len(), plain.len());
            // As the server does: a length placeholder first, set at the end.
            buf.set_prefix([1, 2, 3, 4]);
            plain[..4].copy_from_slice(&[1, 2, 3, 4]);
            let chunks = buf.finish().chunks;
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, plain.to_vec(), "v{version}");
            // Every record slice went out as itself, pointing into the backing buffer.
            let inside = |c: &Bytes| {
                let start = backing.as_ptr() as usize;
                let p = c.as_ptr() as usize;
                !c.is_empty() && p >= start && p < start + backing.len()
            };
            assert_eq!(chunks.iter().filter(|c| inside(c)).count(), 3, "v{version}");
        }
    }
}
