//! The group coordinator for the classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup). The members' leader computes the assignment on the client side; the coordinator only
//! runs the rounds and relays it, so every assignor the clients support works (range, roundrobin,
//! cooperative-sticky).
//!
//! A round (a rebalance): the group enters `PreparingRebalance`; every member must (re)join before the
//! deadline (the longest rebalance timeout, or `initial_delay` for a group that was empty, so that members
//! starting together land in one round); members that do not are removed. Then the generation advances,
//! the leader gets every member's metadata, and the group waits in `CompletingRebalance` until the leader's
//! SyncGroup brings the assignments, which every member's SyncGroup then receives (`Stable`). Members that
//! stop heartbeating for their session timeout are removed, which starts a new round.
//!
//! Membership lives in memory: after a restart members rejoin (committed offsets are durable, see
//! `offsets.rs`). Locks are never held across an `.await`; waiting requests hold a oneshot receiver.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Session timeouts outside this range are refused (Kafka's group.min/max.session.timeout.ms).
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(1000);
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(1_800_000);
/// Upper bound on members per group: bounds the join response and the state kept.
pub const MAX_MEMBERS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// Every state, in the order metrics list them.
    pub const ALL: [GroupState; 4] = [
        GroupState::Empty,
        GroupState::PreparingRebalance,
        GroupState::CompletingRebalance,
        GroupState::Stable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, metadata for the chosen protocol).
    pub members: Vec<(String, Bytes)>,
}

impl JoinResult {
    fn error(error: ResponseError, member_id: String) -> Self {
        JoinResult {
            error: Some(error),
            generation: -1,
            member_id,
            ..Default::default()
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(error: ResponseError) -> Self {
        SyncResult {
            error: Some(error),
            ..Default::default()
        }
    }
}

/// Either an answer now, or one to wait for.
pub enum Reply<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

/// A JoinGroup request, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    /// JoinGroup v4+: an unknown member first gets an id and MEMBER_ID_REQUIRED, then joins with it.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Joined in the current round.
    joined: bool,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not joined yet, with when and their session timeout. A round
    /// waits for them too (as Kafka does), until they join or their session times out.
    pending: HashMap<String, (Instant, Duration)>,
    /// When the current round ends at the latest, and when it may end at the earliest.
    deadline: Instant,
    not_before: Instant,
}

impl Group {
    fn new(now: Instant) -> Self {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            deadline: now,
            not_before: now,
        }
    }
}

/// Snapshot of a group for DescribeGroups.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// One member of a [`GroupDescription`].
#[derive(Debug, Clone)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// Its metadata for the protocol the group chose.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// One group, as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedGroup {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Debug)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// How long a round started on an empty group waits for more members (group.initial.rebalance.delay.ms).
    initial_delay: Duration,
}

impl Coordinator {
    pub fn new(initial_delay: Duration) -> Self {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            initial_delay,
        }
    }

    pub fn join(&self, req: JoinRequest) -> Reply<JoinResult> {
        let now = Instant::now();
        if req.group.is_empty() {
            return Reply::Now(JoinResult::error(ResponseError::InvalidGroupId, req.member_id));
        }
        if req.session_timeout < MIN_SESSION_TIMEOUT || req.session_timeout > MAX_SESSION_TIMEOUT {
            return Reply::Now(JoinResult::error(
                ResponseError::InvalidSessionTimeout,
                req.member_id,
            ));
        }
        let mut groups = self.groups.lock();
        let g = groups.entry(req.group.clone()).or_insert_with(|| Group::new(now));
        if g.state != GroupState::Empty
            && (g.protocol_type.as_deref() != Some(&req.protocol_type) || !shares_protocol(g, &req.protocols))
        {
            return Reply::Now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                req.member_id,
            ));
        }
        let member_id = if req.member_id.is_empty() {
            let id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
            if req.require_known_member_id {
                g.pending.insert(id.clone(), (now, req.session_timeout));
                return Reply::Now(JoinResult::error(ResponseError::MemberIdRequired, id));
            }
            id
        } else if g.members.contains_key(&req.member_id) || g.pending.remove(&req.member_id).is_some() {
            req.member_id
        } else {
            return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, req.member_id));
        };
        if !g.members.contains_key(&member_id) && g.members.len() >= MAX_MEMBERS {
            return Reply::Now(JoinResult::error(ResponseError::GroupMaxSizeReached, member_id));
        }
        let (tx, rx) = oneshot::channel();
        let member = g.members.entry(member_id.clone()).or_insert_with(|| Member {
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout: req.session_timeout,
            rebalance_timeout: req.rebalance_timeout,
            protocols: Vec::new(),
            assignment: Bytes::new(),
            last_seen: now,
            joined: false,
            join_waiter: None,
            sync_waiter: None,
        });
        member.session_timeout = req.session_timeout;
        member.rebalance_timeout = req.rebalance_timeout;
        member.protocols = req.protocols;
        member.last_seen = now;
        member.joined = true;
        // A second JoinGroup from the same member replaces the first; the first is told to rejoin.
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinResult::error(
                ResponseError::RebalanceInProgress,
                member_id.clone(),
            ));
        }
        g.protocol_type = Some(req.protocol_type);
        if g.state != GroupState::PreparingRebalance {
            self.start_round(g, now);
        }
        self.maybe_complete(g, now);
        Reply::Wait(rx)
    }

    fn start_round(&self, g: &mut Group, now: Instant) {
        let longest = g
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        g.not_before = if g.state == GroupState::Empty {
            now + self.initial_delay.min(longest)
        } else {
            now
        };
        g.deadline = now + longest;
        g.state = GroupState::PreparingRebalance;
        for m in g.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
    }

    /// Ends the round when every member has joined (and the initial delay passed) or the deadline came.
    fn maybe_complete(&self, g: &mut Group, now: Instant) {
        if g.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = g.members.values().all(|m| m.joined) && g.pending.is_empty();
        if !(now >= g.deadline || (all_joined && now >= g.not_before)) {
            return;
        }
        // Members that did not rejoin in time are out.
        g.members.retain(|_, m| m.joined);
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.leader = None;
            g.protocol = None;
            g.generation += 1;
            return;
        }
        g.generation += 1;
        g.protocol = choose_protocol(g);
        if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
            g.leader = g.members.keys().next().cloned();
        }
        g.state = GroupState::CompletingRebalance;
        let leader = g.leader.clone().unwrap_or_default();
        let protocol = g.protocol.clone().unwrap_or_default();
        let all: Vec<(String, Bytes)> = g
            .members
            .iter()
            .map(|(id, m)| (id.clone(), protocol_metadata(m, &protocol)))
            .collect();
        for (id, m) in g.members.iter_mut() {
            m.joined = false;
            m.last_seen = now;
            m.assignment = Bytes::new();
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult {
                    error: None,
                    generation: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol: g.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader { all.clone() } else { Vec::new() },
                });
            }
        }
    }

    pub fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Reply<SyncResult> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
        };
        let Some(member) = g.members.get_mut(member_id) else {
            return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
        };
        member.last_seen = Instant::now();
        if generation != g.generation {
            return Reply::Now(SyncResult::error(ResponseError::IllegalGeneration));
        }
        let done = |g: &Group, assignment: Bytes| SyncResult {
            error: None,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            assignment,
        };
        match g.state {
            GroupState::PreparingRebalance => {
                Reply::Now(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Empty => Reply::Now(SyncResult::error(ResponseError::UnknownMemberId)),
            GroupState::Stable => {
                let assignment = member.assignment.clone();
                Reply::Now(done(g, assignment))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                member.sync_waiter = Some(tx);
                if g.leader.as_deref() == Some(member_id) {
                    let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                    g.state = GroupState::Stable;
                    let protocol_type = g.protocol_type.clone();
                    let protocol = g.protocol.clone();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = by_member.remove(id).unwrap_or_default();
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncResult {
                                error: None,
                                protocol_type: protocol_type.clone(),
                                protocol: protocol.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                Reply::Wait(rx)
            }
        }
    }

    pub fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> Option<ResponseError> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let Some(member) = g.members.get_mut(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.last_seen = Instant::now();
        if generation != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        (g.state == GroupState::PreparingRebalance).then_some(ResponseError::RebalanceInProgress)
    }

    /// Removes members; returns per member whether it was known.
    pub fn leave(&self, group: &str, member_ids: &[String]) -> Vec<Option<ResponseError>> {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return member_ids
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect();
        };
        let results: Vec<_> = member_ids
            .iter()
            .map(|id| match g.members.remove(id) {
                Some(m) => {
                    if let Some(w) = m.join_waiter {
                        let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId, id.clone()));
                    }
                    None
                }
                None => Some(ResponseError::UnknownMemberId),
            })
            .collect();
        if results.iter().any(Option::is_none) {
            self.membership_changed(g, now);
        }
        results
    }

    fn membership_changed(&self, g: &mut Group, now: Instant) {
        if g.members.is_empty() {
            g.state = GroupState::Empty;
            g.leader = None;
            g.protocol = None;
            return;
        }
        if g.state != GroupState::PreparingRebalance {
            self.start_round(g, now);
        }
        self.maybe_complete(g, now);
    }

    /// Checks that a commit comes from a current member; `None` means it may be stored.
    pub fn validate_commit(&self, group: &str, generation: i32, member_id: &str) -> Option<ResponseError> {
        if generation < 0 {
            // Simple consumers commit outside any generation; not allowed while the group has members.
            let groups = self.groups.lock();
            return groups
                .get(group)
                .filter(|g| !g.members.is_empty())
                .map(|_| ResponseError::UnknownMemberId);
        }
        let groups = self.groups.lock();
        let Some(g) = groups.get(group) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if !g.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if generation != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        (g.state == GroupState::CompletingRebalance).then_some(ResponseError::RebalanceInProgress)
    }

    /// Expires silent members and ends rounds whose deadline passed. Called periodically.
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    fn tick_at(&self, now: Instant) {
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            let waiting = g.state == GroupState::PreparingRebalance;
            let before = g.members.len();
            // A member parked in JoinGroup is alive; the round deadline decides about it.
            g.members
                .retain(|_, m| (waiting && m.joined) || now.duration_since(m.last_seen) <= m.session_timeout);
            g.pending
                .retain(|_, (at, session)| now.duration_since(*at) <= *session);
            if g.members.len() != before {
                tracing::info!(members = g.members.len(), "group members expired");
                self.membership_changed(g, now);
            } else {
                self.maybe_complete(g, now);
            }
        }
    }

    /// (groups per state, members in all groups), for metrics.
    pub fn counts(&self) -> (Vec<(&'static str, usize)>, usize) {
        let groups = self.groups.lock();
        let by_state = GroupState::ALL
            .iter()
            .map(|s| (s.name(), groups.values().filter(|g| g.state == *s).count()))
            .collect();
        (by_state, groups.values().map(|g| g.members.len()).sum())
    }

    pub fn list(&self) -> Vec<ListedGroup> {
        let groups = self.groups.lock();
        let mut all: Vec<_> = groups
            .iter()
            .map(|(id, g)| ListedGroup {
                group_id: id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect();
        all.sort();
        all
    }

    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: protocol_metadata(m, &protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
            protocol,
        })
    }

    /// Forgets every group `doomed` names, members and all (this broker no longer coordinates them:
    /// their members' next requests get NOT_COORDINATOR and find the new coordinator). Returns how many.
    pub fn forget_where(&self, doomed: impl Fn(&str) -> bool) -> usize {
        let mut groups = self.groups.lock();
        let before = groups.len();
        groups.retain(|id, _| !doomed(id));
        before - groups.len()
    }

    /// Forgets an empty group. `Err` if it still has members.
    pub fn delete(&self, group: &str) -> Result<(), ResponseError> {
        let mut groups = self.groups.lock();
        match groups.get(group) {
            Some(g) if !g.members.is_empty() => Err(ResponseError::NonEmptyGroup),
            _ => {
                groups.remove(group);
                Ok(())
            }
        }
    }
}

fn shares_protocol(g: &Group, protocols: &[(String, Bytes)]) -> bool {
    g.members.is_empty()
        || g.members.values().all(|m| {
            m.protocols
                .iter()
                .any(|(name, _)| protocols.iter().any(|(n, _)| n == name))
        })
}

/// The protocol every member supports that the members prefer most (by summed rank).
fn choose_protocol(g: &Group) -> Option<String> {
    let first = g.members.values().next()?;
    first
        .protocols
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            g.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
        })
        .min_by_key(|name| {
            g.members
                .values()
                .map(|m| {
                    m.protocols
                        .iter()
                        .position(|(n, _)| n == *name)
                        .unwrap_or(usize::MAX)
                })
                .sum::<usize>()
        })
        .cloned()
}

fn protocol_metadata(m: &Member, protocol: &str) -> Bytes {
    m.protocols
        .iter()
        .find(|(n, _)| n == protocol)
        .map(|(_, b)| b.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(c: &Coordinator, member: &str) -> Reply<JoinResult> {
        c.join(JoinRequest {
            group: "g".into(),
            member_id: member.into(),
            require_known_member_id: false,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
        })
    }

    fn wait<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Wait(mut rx) => rx.try_recv().expect("answered"),
        }
    }

    #[test]
    fn a_round_relays_the_leaders_assignment_and_fences_old_generations() {
        let c = Coordinator::new(Duration::ZERO);
        let a = wait(join(&c, ""));
        assert_eq!((a.error, a.generation), (None, 1));
        assert_eq!(a.leader, a.member_id);
        assert_eq!(a.members.len(), 1, "the leader sees every member");
        let s = wait(c.sync(
            "g",
            1,
            &a.member_id,
            vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
        ));
        assert_eq!(&s.assignment[..], b"all");
        assert_eq!(c.heartbeat("g", 1, &a.member_id), None);

        // A second member starts a round; the first must rejoin before it completes.
        let mut b = match join(&c, "") {
            Reply::Wait(rx) => rx,
            Reply::Now(r) => panic!("completed without the first member: {r:?}"),
        };
        assert!(b.try_recv().is_err());
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id),
            Some(ResponseError::RebalanceInProgress)
        );
        let a2 = wait(join(&c, &a.member_id));
        let b = b.try_recv().expect("round completed");
        assert_eq!((a2.generation, b.generation), (2, 2));
        assert_eq!(a2.leader, a.member_id, "the leader stays leader");
        assert!(b.members.is_empty(), "followers get no member list");
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.validate_commit("g", 1, &a.member_id),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.validate_commit("g", 2, "stranger"),
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            c.validate_commit("g", -1, ""),
            Some(ResponseError::UnknownMemberId),
            "group has members"
        );

        // The follower's sync waits for the leader's.
        let pending = c.sync("g", 2, &b.member_id, vec![]);
        wait(c.sync(
            "g",
            2,
            &a.member_id,
            vec![(b.member_id.clone(), Bytes::from_static(b"half"))],
        ));
        assert_eq!(&wait(pending).assignment[..], b"half");
        assert_eq!(c.validate_commit("g", 2, &b.member_id), None);

        assert_eq!(c.leave("g", std::slice::from_ref(&b.member_id)), vec![None]);
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id),
            Some(ResponseError::RebalanceInProgress)
        );
        assert_eq!(c.delete("g"), Err(ResponseError::NonEmptyGroup));
    }

    #[test]
    fn new_members_must_first_get_an_id_when_asked() {
        let c = Coordinator::new(Duration::ZERO);
        let mut req = JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            require_known_member_id: true,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
        };
        let first = wait(c.join(req.clone()));
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        req.member_id = first.member_id.clone();
        assert_eq!(wait(c.join(req.clone())).member_id, first.member_id);
        req.member_id = "made-up".into();
        assert_eq!(wait(c.join(req)).error, Some(ResponseError::UnknownMemberId));
    }

    #[test]
    fn members_that_miss_the_round_or_go_silent_are_removed() {
        let c = Coordinator::new(Duration::ZERO);
        let a = wait(join(&c, ""));
        wait(c.sync("g", a.generation, &a.member_id, vec![]));
        let mut b = match join(&c, "") {
            Reply::Wait(rx) => rx,
            Reply::Now(r) => panic!("{r:?}"),
        };
        // `a` never rejoins: at the round's deadline (its 10 s rebalance timeout) it is dropped.
        c.tick_at(Instant::now() + Duration::from_secs(11));
        let b = b.try_recv().expect("round completed without a");
        assert_eq!(b.leader, b.member_id);
        assert_eq!(
            c.heartbeat("g", b.generation, &a.member_id),
            Some(ResponseError::UnknownMemberId)
        );
        wait(c.sync("g", b.generation, &b.member_id, vec![]));
        // `b` goes silent past its 10 s session timeout: removed, the group is empty.
        c.tick_at(Instant::now() + Duration::from_secs(30));
        assert_eq!(
            c.describe("g").map(|d| (d.state, d.members.len())),
            Some((GroupState::Empty, 0))
        );
        assert_eq!(c.delete("g"), Ok(()));
    }
}
