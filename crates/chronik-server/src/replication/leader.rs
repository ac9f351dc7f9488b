//! What the leader of one partition tracks: its own log end and durable end, each follower's durable
//! end and when it was last caught up, the ISR (committed, and a change in flight), and from these the
//! high watermark. Time is passed in (milliseconds of a monotonic clock).

use std::collections::{BTreeMap, BTreeSet};

/// Kafka's default `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
pub const DEFAULT_REPLICA_LAG_TIME_MAX_MS: u64 = 30_000;

/// An ISR change not answered for this long counts as lost: it may be proposed again (if the first one
/// was committed after all, the second is refused as stale and the metadata brings the result).
pub const ISR_CHANGE_TIMEOUT_MS: u64 = 5_000;

/// One follower's progress as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// The offset the follower fetches from: every offset below it is durable on the follower. -1 until
    /// its first fetch in this epoch.
    durable_end: i64,
    /// When the follower last had everything the leader had (Kafka's lastCaughtUpTime).
    caught_up_ms: u64,
    /// The leader's log end and the time at the follower's previous fetch.
    last_fetch_leader_end: i64,
    last_fetch_ms: u64,
}

/// An ISR change the leader asks the controller for, based on the partition epoch it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<u64>,
}

/// Whether an acks=all batch ending at some offset may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Not yet below the high watermark.
    Waiting,
    Done,
    /// Below the high watermark, but the ISR is smaller than `min.insync.replicas`: Kafka's
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND (the client retries; the record is stored).
    NotEnoughReplicasAfterAppend,
}

/// Why a follower's fetch was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRefused {
    /// The fetching broker is not a replica of the partition.
    NotAReplica,
}

/// The leader side of one partition in one leader epoch (see the module doc of `replication`).
#[derive(Debug, Clone)]
pub struct LeaderState {
    me: u64,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<u64>,
    /// The ISR as the controller last committed it.
    isr: BTreeSet<u64>,
    /// Every member of the changes proposed on the current partition epoch: any of them may still be
    /// committed (a refused or timed-out proposal may have a retry, or an earlier try, in flight), so all
    /// count for the high watermark until the partition epoch moves on.
    proposed: BTreeSet<u64>,
    /// When the last change was proposed, while it is unanswered.
    awaiting: Option<u64>,
    followers: BTreeMap<u64, Progress>,
    /// The offset the leader's log ended at when this epoch began.
    epoch_start: i64,
    log_end: i64,
    durable_end: i64,
    high_watermark: i64,
    lag_max_ms: u64,
}

impl LeaderState {
    /// The state of a broker that became leader at `now_ms`, with its log ending (durably: what recovery
    /// or a follower kept) at `log_end`. `known_hw` is the high watermark it knew as a follower (0 if
    /// none). ISR followers count as caught up now, others as never.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: u64,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: &[u64],
        isr: &[u64],
        log_end: i64,
        known_hw: i64,
        now_ms: u64,
        lag_max_ms: u64,
    ) -> Self {
        let isr: BTreeSet<u64> = isr.iter().copied().collect();
        let followers = replicas
            .iter()
            .filter(|&&r| r != me)
            .map(|&r| {
                let progress = Progress {
                    durable_end: -1,
                    caught_up_ms: if isr.contains(&r) { now_ms } else { 0 },
                    last_fetch_leader_end: -1,
                    last_fetch_ms: 0,
                };
                (r, progress)
            })
            .collect();
        let mut state = Self {
            me,
            leader_epoch,
            partition_epoch,
            replicas: replicas.to_vec(),
            isr,
            proposed: BTreeSet::new(),
            awaiting: None,
            followers,
            epoch_start: log_end,
            log_end,
            durable_end: log_end,
            high_watermark: known_hw.clamp(0, log_end),
            lag_max_ms,
        };
        state.advance_hw();
        state
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn isr(&self) -> impl Iterator<Item = u64> + '_ {
        self.isr.iter().copied()
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The high watermark clients may be told, once it has reached the start of this epoch (before, it
    /// could be below one a previous leader exposed): `None` until then.
    pub fn visible_high_watermark(&self) -> Option<i64> {
        (self.high_watermark >= self.epoch_start).then_some(self.high_watermark)
    }

    /// The leader appended: its log now ends at `log_end`.
    pub fn on_append(&mut self, log_end: i64) {
        self.log_end = self.log_end.max(log_end);
    }

    /// The leader's fdatasync made everything below `durable_end` durable. Returns whether the high
    /// watermark moved.
    pub fn on_durable(&mut self, durable_end: i64) -> bool {
        self.durable_end = self.durable_end.max(durable_end);
        self.log_end = self.log_end.max(durable_end);
        self.advance_hw()
    }

    /// A follower fetched from `fetch_offset` (everything below durable on it) at `now_ms`. Returns
    /// whether the high watermark moved.
    pub fn on_fetch(&mut self, follower: u64, fetch_offset: i64, now_ms: u64) -> Result<bool, FetchRefused> {
        let log_end = self.log_end;
        let p = self
            .followers
            .get_mut(&follower)
            .ok_or(FetchRefused::NotAReplica)?;
        // A follower cut back (a divergent tail) fetches from lower down: its durable end goes back.
        p.durable_end = fetch_offset;
        if fetch_offset >= log_end {
            p.caught_up_ms = p.caught_up_ms.max(now_ms);
        } else if p.last_fetch_leader_end >= 0 && fetch_offset >= p.last_fetch_leader_end {
            // Everything the leader had at the previous fetch, which the follower then asked for.
            p.caught_up_ms = p.caught_up_ms.max(p.last_fetch_ms);
        }
        p.last_fetch_leader_end = log_end;
        p.last_fetch_ms = now_ms;
        Ok(self.advance_hw())
    }

    /// The controller's current view of the partition, as this broker applied it; a different leader
    /// epoch means this state is over (the caller drops it). A newer partition epoch settles every
    /// change proposed before it (the controller committed at most one of them, and the ISR says which).
    /// Returns whether the high watermark moved.
    pub fn on_metadata(&mut self, partition_epoch: i32, isr: &[u64]) -> bool {
        if partition_epoch <= self.partition_epoch {
            return false;
        }
        self.partition_epoch = partition_epoch;
        self.isr = isr.iter().copied().collect();
        self.proposed.clear();
        self.awaiting = None;
        self.advance_hw()
    }

    /// The controller refused the last change (or the proposal failed): another may be proposed. Its
    /// members still count until the partition epoch moves on: a retry of it may yet be committed.
    pub fn on_change_refused(&mut self) {
        self.awaiting = None;
    }

    /// The ISR change to propose now, if one is due and none is in flight (or the one in flight went
    /// unanswered for [`ISR_CHANGE_TIMEOUT_MS`]): followers not caught up for
    /// longer than `replica.lag.time.max.ms` leave; ones that have everything acknowledged and this
    /// epoch's start join. The change is then in flight until [`LeaderState::on_metadata`] or
    /// [`LeaderState::on_change_refused`].
    pub fn isr_change(&mut self, now_ms: u64) -> Option<IsrChange> {
        if self
            .awaiting
            .is_some_and(|at| now_ms.saturating_sub(at) < ISR_CHANGE_TIMEOUT_MS)
        {
            return None;
        }
        let mut next = self.isr.clone();
        next.insert(self.me);
        for (&id, p) in &self.followers {
            let lagging = now_ms.saturating_sub(p.caught_up_ms) > self.lag_max_ms;
            if self.isr.contains(&id) && lagging {
                next.remove(&id);
            } else if !self.isr.contains(&id)
                && p.durable_end >= self.high_watermark
                && p.durable_end >= self.epoch_start
            {
                next.insert(id);
            }
        }
        if next == self.isr {
            return None;
        }
        let isr: Vec<u64> = self
            .replicas
            .iter()
            .copied()
            .filter(|r| next.contains(r))
            .collect();
        self.proposed.extend(next.iter().copied());
        self.awaiting = Some(now_ms);
        Some(IsrChange {
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
            isr,
        })
    }

    /// Whether an acks=all batch may be appended: the committed ISR has at least `min_insync` members
    /// (else Kafka's NOT_ENOUGH_REPLICAS, and nothing is appended).
    pub fn enough_replicas(&self, min_insync: usize) -> bool {
        self.isr.len() >= min_insync
    }

    /// Whether an acks=all batch whose last offset is `end - 1` may be answered.
    pub fn ack(&self, end: i64, min_insync: usize) -> Ack {
        if self.high_watermark < end {
            Ack::Waiting
        } else if self.isr.len() < min_insync {
            Ack::NotEnoughReplicasAfterAppend
        } else {
            Ack::Done
        }
    }

    /// Moves the high watermark up to the smallest durable end over the leader and the maximal ISR.
    fn advance_hw(&mut self) -> bool {
        let mut hw = self.durable_end;
        let counted = self.isr.iter().chain(self.proposed.iter());
        for id in counted.filter(|&&id| id != self.me) {
            // A member that is not a replica any more has nothing to wait for.
            if let Some(p) = self.followers.get(id) {
                hw = hw.min(p.durable_end);
            }
        }
        if hw > self.high_watermark {
            self.high_watermark = hw;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: u64 = 10_000;

    fn three(isr: &[u64], log_end: i64) -> LeaderState {
        LeaderState::new(1, 4, 7, &[1, 2, 3], isr, log_end, 0, 1_000, LAG)
    }

    #[test]
    fn the_high_watermark_waits_for_every_isr_member_to_make_the_data_durable() {
        let mut s = three(&[1, 2, 3], 0);
        s.on_append(10);
        assert!(!s.on_durable(10), "followers have nothing yet");
        assert!(!s.on_fetch(2, 10, 1_100).unwrap());
        assert_eq!(s.high_watermark(), 0);
        assert!(s.on_fetch(3, 6, 1_100).unwrap());
        assert_eq!(s.high_watermark(), 6);
        assert_eq!(s.ack(6, 2), Ack::Done);
        assert_eq!(s.ack(7, 2), Ack::Waiting);
        // The leader's own fdatasync counts as much as the followers'.
        s.on_append(20);
        s.on_fetch(2, 20, 1_200).unwrap();
        s.on_fetch(3, 20, 1_200).unwrap();
        assert_eq!(s.high_watermark(), 10);
        s.on_durable(20);
        assert_eq!(s.high_watermark(), 20);
        assert_eq!(s.on_fetch(9, 20, 1_200), Err(FetchRefused::NotAReplica));
    }

    #[test]
    fn a_lagging_follower_leaves_only_once_the_controller_committed_it() {
        let mut s = three(&[1, 2, 3], 0);
        s.on_append(10);
        s.on_durable(10);
        s.on_fetch(2, 10, 2_000).unwrap();
        // Follower 3 never fetches: after the lag time it is proposed out.
        assert_eq!(s.isr_change(1_000 + LAG), None);
        let change = s.isr_change(1_001 + LAG).unwrap();
        assert_eq!((change.isr, change.partition_epoch), (vec![1, 2], 7));
        assert_eq!(s.isr_change(1_002 + LAG), None, "one change in flight");
        s.on_fetch(2, 10, 1_000 + LAG + ISR_CHANGE_TIMEOUT_MS).unwrap();
        let again = s.isr_change(1_001 + LAG + ISR_CHANGE_TIMEOUT_MS).unwrap();
        assert_eq!(again.isr, vec![1, 2], "unanswered for too long: proposed again");
        // Until committed, the HW still waits for it.
        assert_eq!(s.high_watermark(), 0);
        assert!(s.on_metadata(8, &[1, 2]));
        assert_eq!(s.high_watermark(), 10);
        assert_eq!(s.ack(10, 2), Ack::Done);
        assert_eq!(s.ack(10, 3), Ack::NotEnoughReplicasAfterAppend);
        assert!(!s.enough_replicas(3));
    }

    #[test]
    fn a_follower_joins_once_it_has_everything_acknowledged_and_counts_at_once() {
        let mut s = three(&[1, 2], 50);
        assert_eq!(s.visible_high_watermark(), None, "below the epoch's start");
        s.on_fetch(2, 50, 1_100).unwrap();
        assert_eq!(s.visible_high_watermark(), Some(50));
        s.on_append(60);
        s.on_durable(60);
        // Follower 3 is behind the HW: not yet.
        s.on_fetch(3, 40, 1_200).unwrap();
        assert_eq!(s.isr_change(1_200), None);
        s.on_fetch(2, 60, 1_300).unwrap();
        assert_eq!(s.high_watermark(), 60);
        s.on_fetch(3, 60, 1_300).unwrap();
        let change = s.isr_change(1_300).unwrap();
        assert_eq!(change.isr, vec![1, 2, 3]);
        // Being added, it counts for the HW at once.
        s.on_append(70);
        s.on_durable(70);
        s.on_fetch(2, 70, 1_400).unwrap();
        assert_eq!(s.high_watermark(), 60);
        // Refused: it may be proposed again, and it still counts (an earlier try may yet commit).
        s.on_change_refused();
        s.on_fetch(3, 60, 1_400).unwrap();
        s.on_fetch(2, 70, 1_400).unwrap();
        assert_eq!(s.high_watermark(), 60, "follower 3 still counts");
        assert!(s.isr_change(1_400).is_some());
        // The controller's answer settles it: committed without follower 3.
        assert!(s.on_metadata(8, &[1, 2]));
        assert_eq!(s.high_watermark(), 70);
    }

    #[test]
    fn caught_up_time_follows_kafkas_rule() {
        let mut s = three(&[1, 2, 3], 0);
        s.on_append(10);
        s.on_fetch(2, 0, 5_000).unwrap();
        s.on_append(20);
        // Fetching all the leader had at the previous fetch: caught up as of that fetch.
        s.on_fetch(2, 10, 12_000).unwrap();
        s.on_fetch(3, 20, 12_000).unwrap();
        assert_eq!(s.isr_change(1_000 + LAG + 1), None);
        let change = s.isr_change(5_000 + LAG + 1).unwrap();
        assert_eq!(change.isr, vec![1, 3]);
    }
}
