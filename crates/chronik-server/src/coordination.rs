//! Which consumer groups this broker coordinates. As in Kafka, committed offsets live in an internal
//! topic with several partitions (`__chronik_offsets`, created on the first FindCoordinator, placed by
//! the controller like any topic); a group belongs to partition `hash(group) mod partitions`, and the
//! broker leading that partition is the group's coordinator: it holds the group's membership in memory
//! and its offsets in that partition's store ([`Offsets`]).
//!
//! Invariants:
//! - A broker answers a group's requests only while the metadata applied here says it leads the group's
//!   offsets partition and that partition's store is loaded; otherwise NOT_COORDINATOR (or
//!   COORDINATOR_LOAD_IN_PROGRESS while loading), which makes clients look the coordinator up again.
//! - A store is opened when leadership of its partition arrives and dropped when it leaves (its writer
//!   finishes what was queued first), and the groups of a partition no longer led are forgotten here, so
//!   a broker that lost a partition never answers from stale state.
//! - The hash is Java's `String.hashCode` (as Kafka's), so a group's partition is the one Kafka's tools
//!   would compute for the same partition count.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chronik_wal::WalManager;
use parking_lot::{Mutex, RwLock};

use crate::offsets::{Offsets, OffsetsError};

/// The internal topic holding committed offsets.
pub use crate::offsets::OFFSETS_TOPIC;

/// The offsets partition of `group` when the offsets topic has `partitions` partitions.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)));
    // Kafka's Utils.abs: i32::MIN maps to 0, not to itself.
    (hash & i32::MAX) % partitions.max(1)
}

/// The offsets stores of the offsets partitions this broker leads.
pub struct OffsetShards {
    wal: Arc<WalManager>,
    shards: RwLock<BTreeMap<i32, Arc<Offsets>>>,
    /// One sync at a time: two would open one partition's store twice.
    syncing: Mutex<()>,
}

impl std::fmt::Debug for OffsetShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetShards")
            .field("loaded", &self.shards.read().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What one [`OffsetShards::sync`] changed.
#[derive(Debug, Default)]
pub struct Synced {
    pub opened: Vec<i32>,
    pub closed: Vec<i32>,
    pub failed: Vec<(i32, OffsetsError)>,
}

impl OffsetShards {
    pub fn new(wal: Arc<WalManager>) -> Self {
        Self {
            wal,
            shards: RwLock::new(BTreeMap::new()),
            syncing: Mutex::new(()),
        }
    }

    /// The store of offsets partition `partition`, if loaded here.
    pub fn get(&self, partition: i32) -> Option<Arc<Offsets>> {
        self.shards.read().get(&partition).cloned()
    }

    /// Every loaded store.
    pub fn all(&self) -> Vec<(i32, Arc<Offsets>)> {
        self.shards
            .read()
            .iter()
            .map(|(p, o)| (*p, Arc::clone(o)))
            .collect()
    }

    /// Loads the stores of the partitions in `led()` not loaded yet and closes the others (their writers
    /// finish what was queued). Blocking (a store loads its snapshot and replays its log).
    /// `led` is read once this sync holds the lock, so no sync acts on older metadata than one before it.
    pub fn sync(&self, led: impl FnOnce() -> BTreeSet<i32>) -> Synced {
        let _one = self.syncing.lock();
        let led = &led();
        let mut done = Synced::default();
        let gone: Vec<i32> = self
            .shards
            .read()
            .keys()
            .filter(|p| !led.contains(p))
            .copied()
            .collect();
        for p in gone {
            // Closed outside the map's lock: the writer finishes its queue first. A request still
            // holding the store gets `Stopped` for anything it queues after this.
            let store = self.shards.write().remove(&p);
            if let Some(store) = store {
                store.close();
            }
            done.closed.push(p);
        }
        for &p in led {
            if self.shards.read().contains_key(&p) {
                continue;
            }
            match Offsets::open_partition(&self.wal, p) {
                Ok(store) => {
                    self.shards.write().insert(p, Arc::new(store));
                    done.opened.push(p);
                }
                Err(e) => done.failed.push((p, e)),
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::partition_for;

    #[test]
    fn groups_map_to_the_partition_kafka_computes() {
        // Java: "hello".hashCode() == 99162322, and 99162322 % 50 == 22.
        assert_eq!(partition_for("hello", 50), 22);
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("anything", 1), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka's abs maps it to 0.
        assert_eq!(partition_for("polygenelubricants", 7), 0);
        // A negative hash ("Aaaaaaaaaaaaaaaaaa" overflows): the sign bit is dropped, as Kafka's abs does.
        let p = partition_for("Aaaaaaaaaaaaaaaaaa", 10);
        assert!((0..10).contains(&p));
    }
}
