//! The broker's replicas: for each partition the metadata assigns this broker, its role as of the
//! metadata applied here — leader in some epoch (with its [`LeaderState`]) or follower — kept in step by
//! [`Replicas::sync`] after every metadata change, and the high watermark consumers read up to.
//!
//! Taking office as leader makes the partition's log durable and records the epoch's start in its term
//! map (`PartitionWal::begin_term`) before the role is set, so the epoch starts at a durable end that
//! no crash can shorten. Leaving office makes the log durable too: a follower's fetch offset must be
//! durable (see `sim_tests.rs`).

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use chronik_cluster::MetadataState;
use chronik_wal::{PartitionWal, TopicPartition, WalManager};
use dashmap::DashMap;
use parking_lot::Mutex;

use super::leader::LeaderState;

/// Milliseconds of a monotonic clock, for lag and timeouts.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the metadata says of one partition this broker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub tp: TopicPartition,
    /// The topic's id: a topic deleted and created again under its name is another partition.
    pub topic_id: [u8; 16],
    pub leader: Option<u64>,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
}

/// Every partition `state` places on broker `me`.
pub fn assignments(state: &MetadataState, me: u64) -> Vec<Assignment> {
    let mut out = Vec::new();
    for (name, t) in &state.topics {
        let topic: Arc<str> = Arc::from(name.as_str());
        for (i, p) in t.partitions.iter().enumerate() {
            if p.replicas.contains(&me) {
                out.push(Assignment {
                    tp: TopicPartition::new(Arc::clone(&topic), i as i32),
                    topic_id: t.topic_id,
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                });
            }
        }
    }
    out
}

/// A partition's role here.
#[derive(Debug)]
pub enum Role {
    Leader(Box<LeaderState>),
    Follower {
        leader: Option<u64>,
        leader_epoch: i32,
        /// The high watermark as the leader last told it (0 until then).
        high_watermark: i64,
    },
}

/// One local partition's replica.
#[derive(Debug)]
pub struct Replica {
    topic_id: [u8; 16],
    role: Mutex<Role>,
}

impl Replica {
    /// The leader epoch this broker leads the partition in, if it does.
    pub fn leading_epoch(&self) -> Option<i32> {
        match &*self.role.lock() {
            Role::Leader(s) => Some(s.leader_epoch()),
            Role::Follower { .. } => None,
        }
    }
}

fn fresh(topic_id: [u8; 16]) -> Arc<Replica> {
    Arc::new(Replica {
        topic_id,
        role: Mutex::new(Role::Follower {
            leader: None,
            leader_epoch: -1,
            high_watermark: 0,
        }),
    })
}

/// What one [`Replicas::sync`] changed.
#[derive(Debug, Default)]
pub struct Synced {
    /// Partitions this broker took office for.
    pub became_leader: Vec<TopicPartition>,
    /// Partitions this broker now follows (or that have no leader).
    pub became_follower: Vec<TopicPartition>,
    /// Partitions whose change could not be made (retried at the next sync), and why.
    pub failed: Vec<(TopicPartition, String)>,
}

/// The replicas of this broker.
#[derive(Debug)]
pub struct Replicas {
    me: u64,
    wal: Arc<WalManager>,
    lag_max_ms: u64,
    partitions: DashMap<TopicPartition, Arc<Replica>>,
    /// Serialises [`Replicas::sync`]: a pass that read older metadata must not finish after a newer one.
    syncing: Mutex<()>,
}

impl Replicas {
    pub fn new(me: u64, wal: Arc<WalManager>, lag_max_ms: u64) -> Self {
        Self {
            me,
            wal,
            lag_max_ms,
            partitions: DashMap::new(),
            syncing: Mutex::new(()),
        }
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Replica>> {
        self.partitions.get(tp).map(|r| Arc::clone(&r))
    }

    /// Brings every role in step with the assignments `wanted` returns (read once this pass runs
    /// alone, so passes apply metadata in order); partitions not in them are dropped. A partition whose
    /// WAL is missing (not yet made, or offline) is skipped. Blocking: taking or leaving office syncs the
    /// log, outside the role's lock (requests read roles meanwhile).
    pub fn sync(&self, wanted: impl FnOnce() -> Vec<Assignment>) -> Synced {
        let _alone = self.syncing.lock();
        let wanted = wanted();
        let mut done = Synced::default();
        let keep: std::collections::HashSet<&TopicPartition> = wanted.iter().map(|a| &a.tp).collect();
        self.partitions.retain(|tp, _| keep.contains(tp));
        for a in &wanted {
            let Some(wal) = self.wal.partition(&a.tp) else {
                continue;
            };
            let replica = {
                let mut entry = self
                    .partitions
                    .entry(a.tp.clone())
                    .or_insert_with(|| fresh(a.topic_id));
                if entry.topic_id != a.topic_id {
                    // The topic was deleted and created again: nothing of the old one's state holds.
                    *entry = fresh(a.topic_id);
                }
                Arc::clone(&entry)
            };
            match self.step(&replica, a, &wal) {
                Ok(Some(true)) => done.became_leader.push(a.tp.clone()),
                Ok(Some(false)) => done.became_follower.push(a.tp.clone()),
                Ok(None) => {}
                Err(e) => done.failed.push((a.tp.clone(), e.to_string())),
            }
        }
        done
    }

    /// Moves one role to what `a` says: `Some(true)` took office, `Some(false)` left it (or follows a
    /// new leader), `None` nothing to do but follow metadata within the epoch. Never back to an older
    /// epoch.
    fn step(
        &self,
        replica: &Replica,
        a: &Assignment,
        wal: &Arc<PartitionWal>,
    ) -> chronik_wal::Result<Option<bool>> {
        let lead = a.leader == Some(self.me);
        let known_hw = {
            let mut role = replica.role.lock();
            match &mut *role {
                Role::Leader(s) if s.leader_epoch() > a.leader_epoch => return Ok(None),
                Role::Follower { leader_epoch, .. } if *leader_epoch > a.leader_epoch => return Ok(None),
                Role::Leader(s) if lead && s.leader_epoch() == a.leader_epoch => {
                    s.on_metadata(a.partition_epoch, &a.isr);
                    return Ok(None);
                }
                Role::Follower {
                    leader, leader_epoch, ..
                } if !lead && *leader == a.leader && *leader_epoch == a.leader_epoch => {
                    return Ok(None);
                }
                Role::Follower { high_watermark, .. } => *high_watermark,
                Role::Leader(s) => s.high_watermark(),
            }
        };
        // Taking office: the epoch starts at a durable end, recorded before anything is appended in it.
        // Leaving it: a follower fetches from its durable end, so what it appended as leader is made
        // durable first. Outside the lock: requests read the role meanwhile (as it was), and only this
        // pass (see `syncing`) changes it.
        wal.sync()?;
        let next = if lead {
            wal.begin_term(a.leader_epoch)?;
            Role::Leader(Box::new(LeaderState::new(
                self.me,
                a.leader_epoch,
                a.partition_epoch,
                &a.replicas,
                &a.isr,
                wal.synced_offset(),
                known_hw,
                now_ms(),
                self.lag_max_ms,
            )))
        } else {
            Role::Follower {
                leader: a.leader,
                leader_epoch: a.leader_epoch,
                high_watermark: known_hw,
            }
        };
        *replica.role.lock() = next;
        Ok(Some(lead))
    }

    /// The high watermark of a partition this broker leads: what its consumers may read up to. `None`
    /// if it does not lead it (as of the metadata applied here).
    pub fn high_watermark(&self, tp: &TopicPartition, wal: &PartitionWal) -> Option<i64> {
        self.leader_state(tp, wal, |s| Some(s.high_watermark()))
    }

    /// [`Replicas::high_watermark`] once it has reached the start of the leader's epoch (before, it may
    /// be below one a previous leader showed): what ListOffsets may report.
    pub fn visible_high_watermark(&self, tp: &TopicPartition, wal: &PartitionWal) -> Option<i64> {
        self.leader_state(tp, wal, LeaderState::visible_high_watermark)
    }

    /// `f` of the leader state of `tp`, brought up to the log's durable end first; `None` if this
    /// broker does not lead it.
    fn leader_state<T>(
        &self,
        tp: &TopicPartition,
        wal: &PartitionWal,
        f: impl FnOnce(&LeaderState) -> Option<T>,
    ) -> Option<T> {
        let replica = self.get(tp)?;
        let mut role = replica.role.lock();
        match &mut *role {
            Role::Leader(s) => {
                s.on_durable(wal.synced_offset());
                f(s)
            }
            Role::Follower { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_wal::{AppendOptions, Batch, Durability, WalConfig};

    fn assignment(tp: &TopicPartition, leader: Option<u64>, leader_epoch: i32) -> Assignment {
        Assignment {
            tp: tp.clone(),
            topic_id: [7; 16],
            leader,
            leader_epoch,
            partition_epoch: leader_epoch,
            replicas: vec![1],
            isr: vec![1],
        }
    }

    #[test]
    fn taking_office_begins_the_epoch_durably_and_the_high_watermark_follows_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(WalManager::open(dir.path(), WalConfig::default()).unwrap());
        let tp = TopicPartition::new("t", 0);
        let p = wal.create_partition(&tp).unwrap();
        let replicas = Replicas::new(1, Arc::clone(&wal), 30_000);
        let append = |durability| {
            let options = AppendOptions {
                durability,
                ..AppendOptions::default()
            };
            p.append_with_options(Batch::new(&b"x"[..], 1, 0), options)
                .unwrap();
        };
        append(Durability::Sync);
        append(Durability::Written);
        let done = replicas.sync(|| vec![assignment(&tp, Some(1), 3)]);
        assert_eq!(done.became_leader, vec![tp.clone()]);
        // Taking office synced what was written, and the epoch starts after it.
        assert_eq!(p.synced_offset(), 2);
        assert_eq!(p.term_end(3), Some((3, 2)));
        assert_eq!(replicas.high_watermark(&tp, &p), Some(2));
        assert_eq!(replicas.visible_high_watermark(&tp, &p), Some(2));
        assert_eq!(replicas.get(&tp).unwrap().leading_epoch(), Some(3));
        // An unsynced append is not below the high watermark until its fdatasync.
        append(Durability::Written);
        assert_eq!(replicas.high_watermark(&tp, &p), Some(2));
        p.sync().unwrap();
        assert_eq!(replicas.high_watermark(&tp, &p), Some(3));
        // The same metadata again changes nothing; another leader makes this one a follower.
        assert!(replicas
            .sync(|| vec![assignment(&tp, Some(1), 3)])
            .became_leader
            .is_empty());
        let done = replicas.sync(|| vec![assignment(&tp, Some(2), 4)]);
        assert_eq!(done.became_follower, vec![tp.clone()]);
        assert_eq!(replicas.high_watermark(&tp, &p), None);
        // Metadata older than what was applied changes nothing.
        assert!(replicas
            .sync(|| vec![assignment(&tp, Some(1), 3)])
            .became_leader
            .is_empty());
        assert_eq!(replicas.high_watermark(&tp, &p), None);
        // The topic deleted and created again under its name (a new log): a fresh role, not the old
        // one's state.
        wal.delete_partition(&tp).unwrap();
        let p = wal.create_partition(&tp).unwrap();
        let mut again = assignment(&tp, Some(1), 0);
        again.topic_id = [8; 16];
        assert_eq!(
            replicas.sync(|| vec![again.clone()]).became_leader,
            vec![tp.clone()]
        );
        assert_eq!(replicas.high_watermark(&tp, &p), Some(0));
        // Gone from the metadata: forgotten.
        replicas.sync(Vec::new);
        assert!(replicas.get(&tp).is_none());
    }
}
