//! Deterministic, seeded simulation of one partition replicated on three brokers, driven through the
//! decisions of `leader.rs` and `follower.rs` and a model controller: messages between brokers are
//! delayed, reordered and lost; brokers are killed (losing what they had not made durable), paused past
//! their session (a deposed leader that wakes believing it still leads), fenced and restarted.
//!
//! Checked after every step:
//! - every acknowledged record is durable, at its offset, on every member of the controller's ISR (so
//!   on any leader it can elect);
//! - the high watermark any broker acting as leader exposes never goes back;
//! - every broker's term map agrees with its log;
//! - the ISR members' logs equal the leader's below its high watermark.
//!
//! And at the end, with every broker back and no message lost, the partition heals: a full ISR, and a
//! new record acknowledged. `CHRONIK_REPLICATION_SEEDS` sets how many seeds run (`test-long.sh` runs
//! many more), `CHRONIK_REPLICATION_FIRST_SEED` the first (to replay a failure, whose last steps are
//! printed).
//!
//! What the model taught, and the broker must do: a broker that restarts while it leads gets a new
//! leader epoch (it may have lost appends and would otherwise write other records at the same offsets
//! in the same epoch); a broker fenced while paused leads nothing after it wakes until it has applied
//! the metadata as of its new registration (else it exposes a high watermark older than its successor's);
//! a deposed leader makes its log durable before it fetches as a follower (its fetch offset must be
//! durable); and a refused ISR change still counts until the partition epoch moves on (a retry of it may
//! commit).

use std::collections::BTreeSet;

use chronik_wal::{io::sim::SimRng, TermMap};

use super::{
    follower::{diverging, truncation_point},
    leader::{Ack, IsrChange, LeaderState},
};

const REPLICAS: [u64; 3] = [1, 2, 3];
const MIN_INSYNC: usize = 2;
const LAG_MS: u64 = 3_000;
/// Records a fetch response carries at most.
const FETCH_MAX: usize = 4;

/// A record: the leader epoch it was appended in and a unique id.
type Record = (i32, u64);

#[derive(Debug)]
enum Role {
    Follower,
    Leader(LeaderState),
}

#[derive(Debug)]
struct Node {
    id: u64,
    alive: bool,
    paused: bool,
    log: Vec<Record>,
    /// Records below this are durable.
    durable: usize,
    terms: TermMap,
    /// The high watermark as this broker knows it (a follower learns it from fetches).
    hw: i64,
    role: Role,
    /// The metadata this broker has applied.
    epoch: i32,
    /// The controller version this broker must apply before it may act as leader again: set when it
    /// registers after being fenced (its lease ran out while it was paused), so a deposed leader that
    /// wakes serves nothing, acknowledges nothing and shows no high watermark until it has caught up
    /// with the metadata.
    needs_version: u64,
    applied_version: u64,
    leader: Option<u64>,
}

impl Node {
    fn new(id: u64) -> Self {
        Self {
            id,
            alive: true,
            paused: false,
            log: Vec::new(),
            durable: 0,
            terms: TermMap::default(),
            hw: 0,
            role: Role::Follower,
            epoch: -1,
            leader: None,
            needs_version: 0,
            applied_version: 0,
        }
    }

    fn acts(&self) -> bool {
        self.alive && !self.paused
    }

    fn leased(&self) -> bool {
        self.applied_version >= self.needs_version
    }

    fn leading(&self) -> Option<&LeaderState> {
        match &self.role {
            Role::Leader(s) if self.acts() && self.leased() => Some(s),
            _ => None,
        }
    }

    fn end(&self) -> i64 {
        self.log.len() as i64
    }

    /// Cuts the log at `to` (durably, as `WalManager::truncate_to` does) and the term map with it.
    fn truncate(&mut self, to: i64) {
        self.log.truncate(to as usize);
        self.durable = self.durable.min(self.log.len());
        self.terms.truncate_from(to);
        self.hw = self.hw.min(to);
    }
}

#[derive(Debug, Clone)]
struct Metadata {
    /// Bumped at every change the controller makes.
    version: u64,
    leader: Option<u64>,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: Vec<u64>,
}

#[derive(Debug)]
enum Msg {
    Fetch {
        from: u64,
        to: u64,
        leader_epoch: i32,
        offset: i64,
        last_epoch: i32,
    },
    Fetched {
        to: u64,
        leader_epoch: i32,
        offset: i64,
        hw: i64,
        answer: Answer,
    },
    Metadata {
        to: u64,
        state: Metadata,
    },
    AlterIsr {
        change: IsrChange,
        from: u64,
    },
    ChangeRefused {
        to: u64,
        leader_epoch: i32,
    },
}

#[derive(Debug)]
enum Answer {
    Records(Vec<Record>),
    Diverging(i32, i64),
    Refused,
}

struct Sim {
    rng: SimRng,
    now: u64,
    nodes: Vec<Node>,
    ctl: Metadata,
    fenced: BTreeSet<u64>,
    msgs: Vec<Msg>,
    next_id: u64,
    /// acks=all batches waiting: (leader, its epoch, offset, id).
    waiting: Vec<(u64, i32, i64, u64)>,
    acked: Vec<(i64, u64)>,
    max_visible_hw: i64,
    trace: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut sim = Self {
            rng: SimRng::new(seed),
            now: 1_000,
            nodes: REPLICAS.iter().map(|&id| Node::new(id)).collect(),
            ctl: Metadata {
                version: 0,
                leader: Some(1),
                leader_epoch: 0,
                partition_epoch: 0,
                isr: REPLICAS.to_vec(),
            },
            fenced: BTreeSet::new(),
            msgs: Vec::new(),
            next_id: 0,
            waiting: Vec::new(),
            acked: Vec::new(),
            max_visible_hw: 0,
            trace: Vec::new(),
        };
        sim.broadcast();
        sim
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn broadcast(&mut self) {
        self.ctl.version += 1;
        for &to in &REPLICAS {
            self.msgs.push(Msg::Metadata {
                to,
                state: self.ctl.clone(),
            });
        }
    }

    fn step(&mut self) {
        let pick = self.rng.below(100);
        match pick {
            0..=19 => self.produce(),
            20..=29 => self.sync(),
            30..=49 => self.fetch(),
            50..=79 => self.deliver(),
            80..=83 => self.drop_msg(),
            84..=87 => self.tick_isr(),
            88 => self.kill(),
            89 => self.pause(),
            90..=91 => self.fence(),
            92..=94 => self.restart(),
            _ => self.now += self.rng.range(1, 1_500),
        }
        self.settle_acks();
        self.check();
    }

    fn produce(&mut self) {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.leading().is_some())
            .map(|n| n.id)
            .collect();
        if leaders.is_empty() {
            return;
        }
        let id = leaders[self.rng.below(leaders.len() as u64) as usize];
        let record_id = self.next_id;
        self.next_id += 1;
        let n = self.node(id);
        let Role::Leader(state) = &mut n.role else {
            unreachable!()
        };
        if !state.enough_replicas(MIN_INSYNC) {
            return;
        }
        let epoch = state.leader_epoch();
        let offset = n.log.len() as i64;
        n.terms
            .assign(epoch, offset)
            .expect("a leader appends in its own epoch");
        n.log.push((epoch, record_id));
        state.on_append(offset + 1);
        self.waiting.push((id, epoch, offset, record_id));
        self.trace
            .push(format!("{id} appends {record_id} at {offset} in epoch {epoch}"));
    }

    fn sync(&mut self) {
        let id = REPLICAS[self.rng.below(3) as usize];
        self.sync_id(id);
    }

    fn fetch(&mut self) {
        let id = REPLICAS[self.rng.below(3) as usize];
        self.fetch_id(id);
    }

    /// Loses a message between brokers. Not metadata: a broker applies the controller's log, late
    /// perhaps, but all of it.
    fn drop_msg(&mut self) {
        if !self.msgs.is_empty() {
            let at = self.rng.below(self.msgs.len() as u64) as usize;
            if !matches!(self.msgs[at], Msg::Metadata { .. }) {
                self.msgs.remove(at);
            }
        }
    }

    fn deliver(&mut self) {
        if self.msgs.is_empty() {
            return;
        }
        // Mostly the oldest, sometimes any: delays and reordering.
        let at = if self.rng.chance(700) {
            0
        } else {
            self.rng.below(self.msgs.len() as u64) as usize
        };
        let msg = self.msgs.remove(at);
        self.handle(msg);
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Fetch {
                from,
                to,
                leader_epoch,
                offset,
                last_epoch,
            } => {
                let n = self.node(to);
                if !n.acts() {
                    return;
                }
                let end = n.end();
                let leased = n.leased();
                let answer = match &mut n.role {
                    Role::Leader(s) if leased && s.leader_epoch() == leader_epoch => {
                        if let Some((e, at)) = diverging(&n.terms, end, last_epoch, offset) {
                            Answer::Diverging(e, at)
                        } else if offset > end {
                            Answer::Refused
                        } else {
                            s.on_fetch(from, offset, now).expect("a replica");
                            let upto = (offset as usize + FETCH_MAX).min(n.log.len());
                            Answer::Records(n.log[offset as usize..upto].to_vec())
                        }
                    }
                    _ => Answer::Refused,
                };
                let hw = match &n.role {
                    Role::Leader(s) => s.high_watermark(),
                    Role::Follower => -1,
                };
                self.msgs.push(Msg::Fetched {
                    to: from,
                    leader_epoch,
                    offset,
                    hw,
                    answer,
                });
            }
            Msg::Fetched {
                to,
                leader_epoch,
                offset,
                hw,
                answer,
            } => {
                let n = self.node(to);
                // Only the answer to where this follower stands now, in the epoch it follows now.
                if !n.acts()
                    || !matches!(n.role, Role::Follower)
                    || n.epoch != leader_epoch
                    || n.end() != offset
                {
                    return;
                }
                match answer {
                    Answer::Refused => {}
                    Answer::Diverging(e, at) => {
                        let (cut, _) = truncation_point(&n.terms, n.end(), n.hw, (e, at));
                        let line = format!("{to} cuts to {cut} (leader: epoch {e} ends at {at})");
                        n.truncate(cut);
                        self.trace.push(line);
                    }
                    Answer::Records(records) => {
                        for r in records {
                            let at = n.end();
                            n.terms
                                .assign(r.0, at)
                                .unwrap_or_else(|e| panic!("follower {to} at {at}: {e}"));
                            n.log.push(r);
                        }
                        // Appended with fdatasync before the next fetch reports the new end.
                        n.durable = n.log.len();
                        n.hw = n.hw.max(hw.min(n.end()));
                    }
                }
            }
            Msg::Metadata { to, state } => self.apply_metadata(to, state),
            Msg::AlterIsr { change, from } => {
                let c = &mut self.ctl;
                let valid = c.leader == Some(from)
                    && c.leader_epoch == change.leader_epoch
                    && c.partition_epoch == change.partition_epoch
                    && change.isr.contains(&from)
                    && change.isr.iter().all(|b| !self.fenced.contains(b));
                if valid {
                    c.isr = change.isr;
                    c.partition_epoch += 1;
                    let ends: Vec<(i64, usize)> = self.nodes.iter().map(|n| (n.end(), n.durable)).collect();
                    self.trace
                        .push(format!("controller: ISR {:?} (ends {ends:?})", self.ctl.isr));
                    self.broadcast();
                } else {
                    self.msgs.push(Msg::ChangeRefused {
                        to: from,
                        leader_epoch: change.leader_epoch,
                    });
                }
            }
            Msg::ChangeRefused { to, leader_epoch } => {
                if let Role::Leader(s) = &mut self.node(to).role {
                    if s.leader_epoch() == leader_epoch {
                        s.on_change_refused();
                    }
                }
            }
        }
    }

    fn apply_metadata(&mut self, to: u64, m: Metadata) {
        let now = self.now;
        let n = self.node(to);
        if !n.alive {
            return;
        }
        n.applied_version = n.applied_version.max(m.version);
        if m.leader_epoch < n.epoch {
            return;
        }
        if m.leader_epoch == n.epoch {
            if let Role::Leader(s) = &mut n.role {
                s.on_metadata(m.partition_epoch, &m.isr);
            }
            return;
        }
        n.epoch = m.leader_epoch;
        n.leader = m.leader;
        if m.leader == Some(to) {
            // Becoming leader: what it holds is made durable, and its epoch begins at its end.
            n.durable = n.log.len();
            let end = n.end();
            n.terms
                .assign(m.leader_epoch, end)
                .expect("a new epoch is newer than any this broker saw");
            n.role = Role::Leader(LeaderState::new(
                to,
                m.leader_epoch,
                m.partition_epoch,
                &REPLICAS,
                &m.isr,
                end,
                n.hw,
                now,
                LAG_MS,
            ));
            self.trace
                .push(format!("{to} leads epoch {} from {end}", m.leader_epoch));
        } else {
            // A deposed leader may hold appends no fdatasync covered yet: its fetch offset says what it
            // has made durable, so it syncs them first (the broker syncs the partition on the change).
            n.durable = n.log.len();
            n.role = Role::Follower;
        }
    }

    fn tick_isr(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if !n.acts() {
                continue;
            }
            let id = n.id;
            if let Role::Leader(s) = &mut n.role {
                if let Some(change) = s.isr_change(now) {
                    self.trace.push(format!("{id} proposes {change:?} with {s:?}"));
                    self.msgs.push(Msg::AlterIsr { change, from: id });
                }
            }
        }
    }

    fn kill(&mut self) {
        let id = REPLICAS[self.rng.below(3) as usize];
        let n = self.node(id);
        if !n.alive {
            return;
        }
        n.alive = false;
        n.paused = false;
        n.log.truncate(n.durable);
        let end = n.end();
        n.terms.truncate_from(end);
        n.hw = n.hw.min(end);
        n.role = Role::Follower;
        n.epoch = -1;
        n.leader = None;
        self.trace.push(format!("kill {id}"));
    }

    fn pause(&mut self) {
        let id = REPLICAS[self.rng.below(3) as usize];
        let n = self.node(id);
        if !n.alive {
            return;
        }
        if n.paused {
            self.resume(id);
        } else {
            n.paused = true;
            self.trace.push(format!("pause {id}"));
        }
    }

    fn resume(&mut self, id: u64) {
        self.node(id).paused = false;
        self.trace.push(format!("resume {id}"));
        if self.fenced.contains(&id) {
            // Its next heartbeat is refused: it registers again, the same process with the same log,
            // and leads nothing until it has applied the metadata as of its registration.
            self.register(id, false);
            let version = self.ctl.version;
            self.node(id).needs_version = version;
        }
    }

    /// The controller fences a broker that stopped heartbeating (dead or paused): out of the ISR unless
    /// it is the last member, and a new leader from the rest of the ISR if it led.
    fn fence(&mut self) {
        let silent: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| !n.acts() && !self.fenced.contains(&n.id))
            .map(|n| n.id)
            .collect();
        if silent.is_empty() {
            return;
        }
        let id = silent[self.rng.below(silent.len() as u64) as usize];
        self.fenced.insert(id);
        let c = &mut self.ctl;
        if c.isr.len() > 1 {
            c.isr.retain(|&b| b != id);
        }
        if c.leader == Some(id) {
            c.leader = c.isr.iter().copied().find(|b| !self.fenced.contains(b));
            c.leader_epoch += 1;
        }
        c.partition_epoch += 1;
        self.trace.push(format!("controller: fence {id}: {:?}", self.ctl));
        self.broadcast();
    }

    /// A dead broker starts again (a paused one resumes) and registers: unfenced; the leader if the
    /// partition has none and it is the ISR's last member; and a new epoch for a partition it leads
    /// still, since a restart may have cost it records it had appended (without one, it could append
    /// other records at the same offsets in the same epoch, and followers could not tell).
    fn restart(&mut self) {
        let id = REPLICAS[self.rng.below(3) as usize];
        if !self.nodes[(id - 1) as usize].alive {
            self.restart_id(id);
        }
    }

    fn settle_acks(&mut self) {
        let mut acked = Vec::new();
        let nodes = &self.nodes;
        self.waiting.retain(|&(leader, epoch, offset, id)| {
            let n = &nodes[(leader - 1) as usize];
            match n.leading() {
                Some(s) if s.leader_epoch() == epoch => match s.ack(offset + 1, MIN_INSYNC) {
                    Ack::Waiting => true,
                    Ack::Done => {
                        acked.push((offset, id));
                        false
                    }
                    Ack::NotEnoughReplicasAfterAppend => false,
                },
                // A paused leader answers nothing yet; one no longer leading fails the request.
                _ => n.alive && n.paused && matches!(&n.role, Role::Leader(s) if s.leader_epoch() == epoch),
            }
        });
        for a in &acked {
            self.trace.push(format!("acknowledged {} at {}", a.1, a.0));
        }
        self.acked.extend(acked);
    }

    fn check(&mut self) {
        for &member in &self.ctl.isr {
            let n = &self.nodes[(member - 1) as usize];
            for &(offset, id) in &self.acked {
                let held = n.log[..n.durable].get(offset as usize).map(|r| r.1);
                assert_eq!(
                    held,
                    Some(id),
                    "acknowledged record {id} at {offset} not durable on ISR member {member}"
                );
            }
        }
        for n in &self.nodes {
            if let Some(visible) = n.leading().and_then(|s| s.visible_high_watermark()) {
                assert!(
                    visible >= self.max_visible_hw,
                    "{} exposes HW {visible} after {} was exposed",
                    n.id,
                    self.max_visible_hw
                );
                self.max_visible_hw = visible;
            }
            let entries = n.terms.entries();
            assert!(
                entries.iter().all(|e| e.start_offset <= n.end()),
                "{}: map {entries:?} past its end {}",
                n.id,
                n.end()
            );
            for (offset, r) in n.log.iter().enumerate() {
                let floor = entries.iter().rev().find(|e| e.start_offset <= offset as i64);
                assert_eq!(
                    floor.map(|e| e.term),
                    Some(r.0),
                    "{}: record at {offset}, map {entries:?}",
                    n.id
                );
            }
        }
        if let Some(leader) = self.ctl.leader {
            let l = &self.nodes[(leader - 1) as usize];
            if let Some(s) = l.leading().filter(|s| s.leader_epoch() == self.ctl.leader_epoch) {
                let hw = s.high_watermark() as usize;
                for &member in &self.ctl.isr {
                    let m = &self.nodes[(member - 1) as usize];
                    if m.alive {
                        assert_eq!(
                            m.log.get(..hw),
                            l.log.get(..hw),
                            "ISR member {member} below HW {hw}"
                        );
                    }
                }
            }
        }
    }

    /// Every broker back, nothing lost any more: the partition must reach a full ISR and acknowledge.
    fn heal(&mut self) {
        for id in REPLICAS {
            let n = self.node(id);
            if !n.alive {
                self.restart_id(id);
            } else if n.paused {
                self.resume(id);
            }
        }
        for round in 0..400 {
            self.now += 200;
            self.tick_isr();
            for id in REPLICAS {
                self.sync_id(id);
                self.fetch_id(id);
            }
            while !self.msgs.is_empty() {
                let msg = self.msgs.remove(0);
                self.handle(msg);
            }
            if round == 100 {
                self.produce();
            }
            self.settle_acks();
            self.check();
            let full = self.ctl.isr.len() == 3;
            if round > 100 && full && self.waiting.is_empty() {
                return;
            }
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let role = match &n.role {
                    Role::Leader(s) => format!("leader {s:?}"),
                    Role::Follower => "follower".into(),
                };
                format!(
                    "{}: epoch {} leader {:?} end {} hw {} terms {:?} {role}",
                    n.id,
                    n.epoch,
                    n.leader,
                    n.end(),
                    n.hw,
                    n.terms.entries()
                )
            })
            .collect();
        panic!("the partition never healed: {:?}\n{}", self.ctl, nodes.join("\n"));
    }

    fn restart_id(&mut self, id: u64) {
        let n = self.node(id);
        debug_assert!(!n.alive);
        n.alive = true;
        self.register(id, true);
        // A new process leads nothing before it has caught up with the metadata.
        let version = self.ctl.version;
        self.node(id).needs_version = version;
    }

    /// The controller registers a broker: unfenced; the leader again if the partition has none and it
    /// is the ISR's last member; a new epoch if it leads and is a new process (`restarted`).
    fn register(&mut self, id: u64, restarted: bool) {
        self.fenced.remove(&id);
        let c = &mut self.ctl;
        let orphaned = c.leader.is_none() && c.isr == [id];
        if orphaned || (restarted && c.leader == Some(id)) {
            c.leader = Some(id);
            c.leader_epoch += 1;
            c.partition_epoch += 1;
        }
        self.trace.push(format!("register {id}: {:?}", self.ctl));
        self.broadcast();
    }

    /// Broker `id` makes its log durable (a leader learns its new durable end).
    fn sync_id(&mut self, id: u64) {
        let n = self.node(id);
        if !n.acts() {
            return;
        }
        n.durable = n.log.len();
        let end = n.end();
        if let Role::Leader(s) = &mut n.role {
            s.on_durable(end);
        }
    }

    /// Broker `id`, if it follows a leader, sends it a fetch from its (durable) end.
    fn fetch_id(&mut self, id: u64) {
        let n = &self.nodes[(id - 1) as usize];
        let (Some(leader), Role::Follower) = (n.leader, &n.role) else {
            return;
        };
        if !n.acts() || leader == id {
            return;
        }
        assert_eq!(n.durable, n.log.len(), "a follower fetches from its durable end");
        self.msgs.push(Msg::Fetch {
            from: id,
            to: leader,
            leader_epoch: n.epoch,
            offset: n.end(),
            last_epoch: n.terms.latest().unwrap_or(-1),
        });
    }
}

fn run(seed: u64, steps: usize) {
    let mut sim = Sim::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            sim.step();
        }
        sim.heal();
        sim.acked.len()
    }));
    if let Err(e) = result {
        let tail: Vec<&String> = sim.trace.iter().rev().take(120).rev().collect();
        eprintln!(
            "seed {seed}: last steps:\n{}",
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn replication_keeps_every_acknowledged_record_under_faults() {
    let seeds: u64 = std::env::var("CHRONIK_REPLICATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("CHRONIK_REPLICATION_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        run(seed, 600);
    }
}

#[test]
fn the_simulation_acknowledges_records_and_moves_leadership() {
    // The checks above mean something only if records are acknowledged and leaders change.
    let mut acked = 0;
    let mut epochs = 0;
    for seed in 0..20 {
        let mut sim = Sim::new(seed);
        for _ in 0..600 {
            sim.step();
        }
        sim.heal();
        acked += sim.acked.len();
        epochs += sim.ctl.leader_epoch;
    }
    assert!(acked > 100, "only {acked} records acknowledged");
    eprintln!("{acked} records acknowledged, {epochs} leader epochs");
    assert!(epochs > 20, "only {epochs} leader changes");
}
