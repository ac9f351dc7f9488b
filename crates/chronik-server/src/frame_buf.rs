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
//! The record data a response holds is accounted in a [`FetchMemory`]: a budget over the broker and a share
//! per connection. Invariants:
//! - A fetch reads only while it holds a [`MemoryShare`] covering what it may read (one batch larger than
//!   that is returned whole, so that a consumer progresses: `api/fetch.rs` reads it again after waiting for
//!   a share that covers it, or grows its share first if the memory is free).
//! - The share travels with the response and is given back when the [`Frame`] has been written or dropped.
//! - A connection runs its fetches one at a time, in arrival order (`server.rs`). A fetch that waits for
//!   memory therefore never waits for a later response of its own connection, which could only be written
//!   after it; every share it waits for is held by a finished response waiting only for its client.
//!
//! What is accounted is record data; the WAL's read buffers around it (frame headers, up to 16 KiB read
//! ahead per read, the head of a batch a read stopped in the middle of) come on top.

use std::sync::Arc;

use bytes::{buf::UninitSlice, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

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

/// A fetch waiting for memory takes at least this much (or all it wants, if less) rather than whatever
/// little is free: Kafka's default partition fetch size, so a share usually covers a whole batch.
const MIN_SHARE_BYTES: u32 = 1 << 20;

tokio::task_local! {
    /// The memory a Fetch may hold; set by its connection around each Fetch it runs.
    pub static FETCH_MEMORY: FetchMemory;
}

/// Where a Fetch response's record data is accounted: the broker-wide budget and its connection's share
/// (see the module doc for the invariants).
#[derive(Debug, Clone)]
pub struct FetchMemory {
    broker: Arc<Semaphore>,
    broker_bytes: u32,
    connection: Arc<Semaphore>,
    connection_bytes: u32,
}

/// Bytes taken from a [`FetchMemory`]; given back when dropped.
#[derive(Debug)]
pub struct MemoryShare {
    /// What it covers; may exceed the permits when a batch is larger than a budget can ever hold.
    bytes: u32,
    broker: OwnedSemaphorePermit,
    connection: OwnedSemaphorePermit,
}

impl MemoryShare {
    pub fn bytes(&self) -> u32 {
        self.bytes
    }
}

impl FetchMemory {
    /// `broker` holds `broker_bytes` permits over all connections; `connection`, `connection_bytes` for one.
    pub fn new(
        broker: Arc<Semaphore>,
        broker_bytes: u32,
        connection: Arc<Semaphore>,
        connection_bytes: u32,
    ) -> Self {
        Self {
            broker,
            broker_bytes,
            connection,
            connection_bytes,
        }
    }

    /// Up to `want` bytes: all of them when free; else what is free, if that is at least
    /// [`MIN_SHARE_BYTES`]; else waits for that much. A short budget makes a fetch return less, not fail.
    pub async fn up_to(&self, want: u32) -> Result<MemoryShare, AcquireError> {
        let want = want.min(self.connection_bytes).min(self.broker_bytes);
        let floor = want.min(MIN_SHARE_BYTES);
        let mut connection = take_up_to(&self.connection, want, floor).await?;
        let n = connection.num_permits() as u32;
        let broker = take_up_to(&self.broker, n, floor.min(n)).await?;
        let bytes = broker.num_permits() as u32;
        // The broker-wide budget was shorter: give back the part of the connection's share it leaves unused.
        drop(connection.split((n - bytes) as usize));
        Ok(MemoryShare {
            bytes,
            broker,
            connection,
        })
    }

    /// A share covering `need` bytes, waiting for it; of a budget smaller than `need`, all of it.
    pub async fn at_least(&self, need: u32) -> Result<MemoryShare, AcquireError> {
        let connection = Arc::clone(&self.connection)
            .acquire_many_owned(need.min(self.connection_bytes))
            .await?;
        let broker = Arc::clone(&self.broker)
            .acquire_many_owned(need.min(self.broker_bytes))
            .await?;
        Ok(MemoryShare {
            bytes: need,
            broker,
            connection,
        })
    }

    /// Grows `share` to cover `need` bytes if the memory is free now; `false` (and `share` unchanged) if not.
    pub fn try_grow(&self, share: &mut MemoryShare, need: u32) -> bool {
        let more = |budget: u32, held: &OwnedSemaphorePermit| {
            need.min(budget).saturating_sub(held.num_permits() as u32)
        };
        let Ok(connection) = Arc::clone(&self.connection)
            .try_acquire_many_owned(more(self.connection_bytes, &share.connection))
        else {
            return false;
        };
        let Ok(broker) =
            Arc::clone(&self.broker).try_acquire_many_owned(more(self.broker_bytes, &share.broker))
        else {
            return false;
        };
        share.connection.merge(connection);
        share.broker.merge(broker);
        share.bytes = share.bytes.max(need);
        true
    }
}

/// Up to `want` permits: what is free if at least `floor`, else `floor` once free (then what more is free).
async fn take_up_to(
    budget: &Arc<Semaphore>,
    want: u32,
    floor: u32,
) -> Result<OwnedSemaphorePermit, AcquireError> {
    let free = (budget.available_permits() as u32).min(want);
    if free >= floor {
        if let Ok(permit) = Arc::clone(budget).try_acquire_many_owned(free) {
            return Ok(permit);
        }
    }
    let mut permit = Arc::clone(budget).acquire_many_owned(floor).await?;
    let more = (budget.available_permits() as u32).min(want - floor);
    if let Ok(extra) = Arc::clone(budget).try_acquire_many_owned(more) {
        permit.merge(extra);
    }
    Ok(permit)
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

    fn memory(broker_bytes: u32, connection_bytes: u32) -> (FetchMemory, Arc<Semaphore>, Arc<Semaphore>) {
        let broker = Arc::new(Semaphore::new(broker_bytes as usize));
        let connection = Arc::new(Semaphore::new(connection_bytes as usize));
        let memory = FetchMemory::new(
            Arc::clone(&broker),
            broker_bytes,
            Arc::clone(&connection),
            connection_bytes,
        );
        (memory, broker, connection)
    }

    fn ready<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        futures_util::FutureExt::now_or_never(Box::pin(f))
    }

    #[test]
    fn a_share_is_all_that_is_wanted_or_what_is_free_and_goes_back_with_its_frame() {
        let (memory, broker, connection) = memory(8 << 20, 4 << 20);
        // Capped by the connection's share.
        let first = ready(memory.up_to(6 << 20)).expect("free").expect("open");
        assert_eq!(first.bytes(), 4 << 20);
        assert_eq!(connection.available_permits(), 0);
        assert_eq!(broker.available_permits(), 4 << 20);
        // Held by a frame until the frame is dropped.
        let mut sets = RecordSets::default();
        sets.hold(first);
        let frame = ChunkedBuf::new(sets).finish();
        assert_eq!(connection.available_permits(), 0);
        drop(frame);
        assert_eq!(connection.available_permits(), 4 << 20);
        assert_eq!(broker.available_permits(), 8 << 20);

        // Less than wanted is free, but at least the minimum share: a smaller share at once.
        let other = Arc::clone(&broker).try_acquire_many_owned(6 << 20).expect("free");
        let shrunk = ready(memory.up_to(4 << 20)).expect("free").expect("open");
        assert_eq!(shrunk.bytes(), 2 << 20);
        assert_eq!(
            connection.available_permits(),
            2 << 20,
            "the unused connection share is given back"
        );
        drop((shrunk, other));
    }

    #[test]
    fn a_fetch_waits_for_the_minimum_share_and_for_a_batch_larger_than_its_share() {
        let (memory, broker, _connection) = memory(4 << 20, 4 << 20);
        let holder = Arc::clone(&broker)
            .try_acquire_many_owned((4 << 20) - 1000)
            .expect("free");
        let mut waiting = Box::pin(memory.up_to(2 << 20));
        assert!(
            ready(waiting.as_mut()).is_none(),
            "took less than the minimum share"
        );
        drop(holder);
        let mut share = ready(waiting).expect("free now").expect("open");
        assert_eq!(share.bytes(), 2 << 20);

        // Growing takes only what is free now, and leaves the share as it was otherwise.
        let holder = Arc::clone(&broker).try_acquire_many_owned(2 << 20).expect("free");
        assert!(!memory.try_grow(&mut share, 3 << 20));
        assert_eq!(share.bytes(), 2 << 20);
        assert_eq!(broker.available_permits(), 0);
        drop(holder);
        assert!(memory.try_grow(&mut share, 3 << 20));
        assert_eq!((share.bytes(), broker.available_permits()), (3 << 20, 1 << 20));
        drop(share);

        // A batch larger than every budget takes all of them.
        let all = ready(memory.at_least(9 << 20)).expect("free").expect("open");
        assert_eq!((all.bytes(), broker.available_permits()), (9 << 20, 0));
    }
}
