//! The memory Fetch responses hold: record data read from the WAL and not yet written to a socket is
//! accounted in a [`FetchMemory`], a budget over the broker and a share per connection. Invariants:
//! - A fetch reads only while it holds a [`MemoryShare`] covering what it may read (one batch larger than
//!   that is returned whole, so that a consumer progresses: `api/fetch.rs` reads it again after waiting for
//!   a share that covers it, or grows its share first if the memory is free).
//! - The share travels with the response and is given back when its frame (`frame_buf::Frame`) has been
//!   written or dropped.
//! - A Fetch runs alone on its connection (`server.rs`). A fetch that waits for memory therefore never
//!   waits for a later response of its own connection, which could only be written after it; every share
//!   it waits for is held by a finished response waiting only for its client.
//!
//! What is accounted is record data; the WAL's read buffers around it (frame headers, up to 16 KiB read
//! ahead per read, the head of a batch a read stopped in the middle of) come on top.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// A fetch waiting for memory takes at least this much (or all it wants, if less) rather than whatever
/// little is free: Kafka's default partition fetch size, so a share usually covers a whole batch.
const MIN_SHARE_BYTES: u32 = 1 << 20;

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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::frame_buf::{ChunkedBuf, RecordSets};

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
