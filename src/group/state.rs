//! One consumer group and the classic rebalance protocol's state machine, as
//! Kafka's `GroupCoordinator` runs it:
//!
//! ```text
//!            join (initial delay)         all members joined / deadline
//!   Empty ───────────────────────▶ PreparingRebalance ─────────────────▶ CompletingRebalance
//!     ▲                                ▲      │ nobody left                   │ leader's SyncGroup
//!     └────────────────────────────────┼──────┘                               ▼
//!                                      └──── join, leave, expiry ─────────  Stable
//! ```
//!
//! Everything here is synchronous and takes the current time as an
//! argument: the coordinator calls it with the group borrowed, and the
//! shard's ticker calls [`Group::tick`] for deadlines. Requests that must
//! wait (JoinGroup until the generation forms, SyncGroup from followers until
//! the leader's assignment) leave a one-shot sender on their member and get
//! [`Reply::Later`]; the state machine answers through it. A dropped receiver
//! (closed connection) is harmless.
//!
//! Membership is recorded in `__consumer_offsets` as Kafka does (a group metadata record when
//! a generation becomes Stable and when the group becomes Empty, see
//! [`Group::membership_to_record`]), and restored from it ([`Group::restore_membership`]) when
//! a coordinator loads the group after a restart or a failover: its members carry on with
//! their generation, without a rebalance, if they heartbeat within their session timeout.
//! Committed offsets are kept here too (see `super::GroupCoordinator` for how they reach the
//! log).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;

use super::records::{GroupMetadataValue, MemberRecord};
use crate::constants::{GROUP_MEMBERS_MAX, GROUP_PENDING_MEMBERS_MAX};

/// Kafka's group states (the names are what ListGroups and DescribeGroups report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Broker settings the state machine needs.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// Wait of the first rebalance of an empty group for more members.
    pub initial_rebalance_delay: Duration,
}

/// A JoinGroup, decoded and validated (group id, session timeout bounds).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Empty for a member without an id yet.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED (KIP-394).
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// (protocol name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

/// One member as the leader sees it in the JoinGroup response.
#[derive(Debug, Clone)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinOutcome {
    pub fn error(error: ResponseError, member_id: impl Into<String>) -> Self {
        JoinOutcome {
            error: error.code(),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.into(),
            members: Vec::new(),
        }
    }
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub fn error(error: ResponseError) -> Self {
        SyncOutcome {
            error: error.code(),
            ..Default::default()
        }
    }
}

/// A SyncGroup, decoded.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// From the leader: (member id, assignment).
    pub assignments: Vec<(String, Bytes)>,
}

/// An answer now, or a receiver the state machine will answer through, with
/// a bound on how long that can take (the rebalance deadline; the ticker
/// enforces it, the bound is a second guard).
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>, Duration),
}

/// One member of a group.
#[derive(Debug)]
pub struct Member {
    pub id: String,
    /// Static membership (KIP-345).
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned in the current generation.
    pub assignment: Bytes,
    /// Last sign of life (heartbeat, join, sync, commit).
    last_seen: Instant,
    /// Set while the member's JoinGroup waits for the generation to form:
    /// the member has joined the rebalance in progress.
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    /// Set while a follower's SyncGroup waits for the leader's assignment.
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn answer_join(&mut self, outcome: JoinOutcome) {
        if let Some(w) = self.join_waiter.take() {
            let _ = w.send(outcome);
        }
    }

    fn answer_sync(&mut self, outcome: SyncOutcome) {
        if let Some(w) = self.sync_waiter.take() {
            let _ = w.send(outcome);
        }
    }
}

/// A committed offset in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Offset of the record in `__consumer_offsets` that set it: a later
    /// record wins, whatever order concurrent writes complete in.
    pub log_offset: i64,
}

/// The first rebalance of an empty group waits `delay`, and again (up to the
/// rebalance timeout in total) while new members keep arriving (Kafka's
/// InitialDelayedJoin).
#[derive(Debug, Clone, Copy)]
struct InitialDelay {
    delay: Duration,
    remaining: Duration,
    new_member_added: bool,
}

/// A member of a group as DescribeGroups reports it.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A consumer group, owned by the shard that owns its `__consumer_offsets`
/// partition.
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// Members by id (ordered, so responses are deterministic).
    members: BTreeMap<String, Member>,
    /// group.instance.id -> current member id.
    static_members: HashMap<String, String>,
    /// Ids handed out with MEMBER_ID_REQUIRED, and when they expire.
    pending_members: HashMap<String, Instant>,
    /// When a PreparingRebalance completes even if not everybody rejoined.
    join_deadline: Option<Instant>,
    initial_delay: Option<InitialDelay>,
    /// Members of the current generation that have not sent SyncGroup yet,
    /// and when they are removed for it.
    pending_sync: BTreeSet<String>,
    sync_deadline: Option<Instant>,
    /// Committed offsets by (topic, partition).
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Orders the offset writes of this group (commits shared, deletes and
    /// compaction exclusive), so the in-memory map applies them in log order.
    pub write_order: Rc<super::write_order::WriteOrder>,
    /// The membership last recorded (or being recorded) in the log: generation and a hash
    /// of the member ids. None: none recorded.
    pub membership_recorded: Option<(i32, u64)>,
    /// The latest group metadata record in the log: its offset and value (appended again
    /// when the segment holding it is compacted away).
    pub membership_record: Option<(i64, Bytes)>,
}

fn new_member_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

impl Group {
    pub fn new(id: String) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            join_deadline: None,
            initial_delay: None,
            pending_sync: BTreeSet::new(),
            sync_deadline: None,
            offsets: BTreeMap::new(),
            write_order: super::write_order::WriteOrder::new(),
            membership_recorded: None,
            membership_record: None,
        }
    }

    /// The generation and a hash of the member ids (in order): what tells whether the log
    /// has recorded the current membership.
    fn membership(&self) -> (i32, u64) {
        let h = self
            .members
            .keys()
            .fold(self.members.len() as u64, |h, id| {
                (h ^ crate::types::fnv1a(id.as_bytes())).wrapping_mul(0x0000_0100_0000_01b3)
            });
        (self.generation, h)
    }

    /// The group metadata record to write now, if the membership changed since the last one:
    /// a Stable generation (each member with its metadata for the chosen protocol and its
    /// assignment), or an Empty group that had a generation. Nothing while a rebalance is in
    /// progress. Marks it recorded (see [`Group::membership_unrecorded`] if the write fails).
    pub fn membership_to_record(&mut self, now_wall_ms: i64) -> Option<GroupMetadataValue> {
        let stable = self.state == GroupState::Stable;
        let empty = self.state == GroupState::Empty && self.generation > 0;
        if !(stable || empty) {
            return None;
        }
        let current = self.membership();
        if self.membership_recorded.as_ref() == Some(&current) {
            return None;
        }
        self.membership_recorded = Some(current);
        let protocol = self.protocol_name.clone().unwrap_or_default();
        Some(GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: if stable {
                self.protocol_name.clone()
            } else {
                None
            },
            leader: if stable { self.leader.clone() } else { None },
            current_state_timestamp_ms: now_wall_ms,
            members: self
                .members
                .values()
                .filter(|_| stable)
                .map(|m| MemberRecord {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Writing the record of `recorded` failed: the next check records it again.
    pub fn membership_unrecorded(&mut self, recorded: &GroupMetadataValue) {
        if self
            .membership_recorded
            .as_ref()
            .is_some_and(|(generation, _)| *generation == recorded.generation)
        {
            self.membership_recorded = None;
        }
    }

    /// Take the membership a group metadata record holds (read at load): the generation, its
    /// protocol and leader, and each member with its assignment, seen `now` (their sessions
    /// start again). With members the group is Stable, else Empty. Used while loading: the
    /// record replaces whatever membership an earlier record gave.
    pub fn restore_membership(&mut self, v: GroupMetadataValue, now: Instant) {
        self.members.clear();
        self.generation = v.generation;
        self.protocol_type = (!v.protocol_type.is_empty()).then(|| v.protocol_type.clone());
        self.protocol_name = v.protocol.clone();
        self.leader = v.leader.clone();
        self.static_members.clear();
        for m in v.members {
            if let Some(instance) = &m.group_instance_id {
                self.static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = v
                .protocol
                .clone()
                .map(|p| vec![(p, m.subscription.clone())])
                .unwrap_or_default();
            self.members.insert(
                m.member_id.clone(),
                Member {
                    id: m.member_id,
                    instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocol_type: v.protocol_type.clone(),
                    protocols,
                    assignment: m.assignment,
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        self.state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        self.membership_recorded = Some(self.membership());
    }

    /// A group metadata tombstone was read (the group was deleted): no members, nothing
    /// recorded.
    pub fn forget_membership(&mut self) {
        self.members.clear();
        self.static_members.clear();
        self.state = GroupState::Empty;
        self.membership_record = None;
        self.membership_recorded = None;
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn has_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    /// Nothing left to keep: no members, no pending ids, no offsets, no
    /// offset write in progress. The coordinator forgets such groups.
    pub fn is_disposable(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
            && self.offsets.is_empty()
            && Rc::strong_count(&self.write_order) == 1
    }

    /// A request naming `instance_id` with a member id that is not the
    /// instance's current one comes from a replaced (fenced) member.
    pub fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|current| current != member_id)
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Can a member with these protocols join? The type must match the
    /// group's, and at least one protocol must be one every other member
    /// supports.
    fn supports(&self, joining: &str, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.values().filter(|m| m.id != joining).collect();
        if others.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                others
                    .iter()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// The protocol every member supports that most members prefer (each
    /// votes for the first supported one in its own list); ties go to the
    /// leader's order.
    fn select_protocol(&self) -> Option<String> {
        let first = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .or_else(|| self.members.values().next())?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        if candidates.is_empty() {
            return first.protocols.first().map(|(n, _)| n.clone());
        }
        let mut votes = vec![0usize; candidates.len()];
        for m in self.members.values() {
            if let Some(i) = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| *c == n))
            {
                votes[i] += 1;
            }
        }
        let best = votes.iter().copied().max().unwrap_or(0);
        let i = votes.iter().position(|v| *v == best).unwrap_or(0);
        Some(candidates[i].clone())
    }

    fn outcome_for(&self, member_id: &str) -> JoinOutcome {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinOutcome {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
    }

    /// Handle a JoinGroup.
    pub fn join(
        &mut self,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinOutcome> {
        let member_id = req.member_id.clone();
        if self.state == GroupState::Dead {
            return Reply::Now(JoinOutcome::error(
                ResponseError::CoordinatorNotAvailable,
                member_id,
            ));
        }
        if !self.supports(&member_id, &req.protocol_type, &req.protocols) {
            return Reply::Now(JoinOutcome::error(
                ResponseError::InconsistentGroupProtocol,
                member_id,
            ));
        }
        if member_id.is_empty() {
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old_id) = self.static_members.get(&instance).cloned() {
                    return self.replace_static_member(&old_id, req, now, settings);
                }
                if self.members.len() >= GROUP_MEMBERS_MAX {
                    return Reply::Now(JoinOutcome::error(ResponseError::GroupMaxSizeReached, ""));
                }
                let id = new_member_id(&instance);
                return self.add_member(id, req, now, settings);
            }
            if self.members.len() + self.pending_members.len() >= GROUP_MEMBERS_MAX
                || self.pending_members.len() >= GROUP_PENDING_MEMBERS_MAX
            {
                return Reply::Now(JoinOutcome::error(ResponseError::GroupMaxSizeReached, ""));
            }
            let id = new_member_id(&req.client_id);
            if req.require_known_member_id {
                self.pending_members
                    .insert(id.clone(), now + req.session_timeout);
                return Reply::Now(JoinOutcome::error(ResponseError::MemberIdRequired, id));
            }
            return self.add_member(id, req, now, settings);
        }
        if self.pending_members.remove(&member_id).is_some() {
            if self.members.len() >= GROUP_MEMBERS_MAX {
                return Reply::Now(JoinOutcome::error(
                    ResponseError::GroupMaxSizeReached,
                    member_id,
                ));
            }
            return self.add_member(member_id, req, now, settings);
        }
        if self.is_fenced(&member_id, req.group_instance_id.as_deref()) {
            return Reply::Now(JoinOutcome::error(
                ResponseError::FencedInstanceId,
                member_id,
            ));
        }
        let Some(member) = self.members.get(&member_id) else {
            return Reply::Now(JoinOutcome::error(
                ResponseError::UnknownMemberId,
                member_id,
            ));
        };
        let same = member.matches(&req.protocols);
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            GroupState::CompletingRebalance if same => {
                self.touch(&member_id, now);
                Reply::Now(self.outcome_for(&member_id))
            }
            GroupState::Stable if same && !is_leader => {
                self.touch(&member_id, now);
                Reply::Now(self.outcome_for(&member_id))
            }
            GroupState::PreparingRebalance
            | GroupState::CompletingRebalance
            | GroupState::Stable => self.update_member(&member_id, req, now, settings),
            GroupState::Empty | GroupState::Dead => Reply::Now(JoinOutcome::error(
                ResponseError::UnknownMemberId,
                member_id,
            )),
        }
    }

    fn waiter_bound(&self) -> Duration {
        self.max_rebalance_timeout() + Duration::from_secs(10)
    }

    fn add_member(
        &mut self,
        id: String,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(i) = &req.group_instance_id {
            self.static_members.insert(i.clone(), id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        self.members.insert(
            id.clone(),
            Member {
                id,
                instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocol_type: req.protocol_type,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: Some(tx),
                sync_waiter: None,
            },
        );
        if let Some(d) = self.initial_delay.as_mut() {
            d.new_member_added = true;
        }
        self.maybe_prepare_rebalance(now, settings);
        self.try_complete_join(now);
        Reply::Later(rx, self.waiter_bound())
    }

    fn update_member(
        &mut self,
        id: &str,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.members.get_mut(id) else {
            return Reply::Now(JoinOutcome::error(ResponseError::UnknownMemberId, id));
        };
        m.protocols = req.protocols;
        m.protocol_type = req.protocol_type;
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.client_id = req.client_id;
        m.last_seen = now;
        // A retried JoinGroup replaces the parked one; the old request's
        // receiver sees a cancellation (REBALANCE_IN_PROGRESS).
        m.join_waiter = Some(tx);
        self.maybe_prepare_rebalance(now, settings);
        self.try_complete_join(now);
        Reply::Later(rx, self.waiter_bound())
    }

    /// A static member rejoined without its member id: it gets a new id, the
    /// old one is fenced. A follower whose protocols did not change keeps its
    /// assignment without a rebalance.
    fn replace_static_member(
        &mut self,
        old_id: &str,
        req: JoinRequest,
        now: Instant,
        settings: &GroupSettings,
    ) -> Reply<JoinOutcome> {
        let Some(instance) = req.group_instance_id.clone() else {
            return Reply::Now(JoinOutcome::error(ResponseError::UnknownMemberId, ""));
        };
        let Some(mut m) = self.members.remove(old_id) else {
            // Inconsistent map: forget the instance and join as new.
            self.static_members.remove(&instance);
            let id = new_member_id(&instance);
            return self.add_member(id, req, now, settings);
        };
        m.answer_join(JoinOutcome::error(ResponseError::FencedInstanceId, old_id));
        m.answer_sync(SyncOutcome::error(ResponseError::FencedInstanceId));
        let new_id = new_member_id(&instance);
        let same = m.matches(&req.protocols);
        m.id = new_id.clone();
        m.last_seen = now;
        m.client_id = req.client_id.clone();
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        self.members.insert(new_id.clone(), m);
        self.static_members.insert(instance, new_id.clone());
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        if self.pending_sync.remove(old_id) {
            self.pending_sync.insert(new_id.clone());
        }
        let is_leader = self.leader.as_deref() == Some(new_id.as_str());
        if self.state == GroupState::Stable && same && !is_leader {
            return Reply::Now(self.outcome_for(&new_id));
        }
        self.update_member(&new_id, req, now, settings)
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings) {
        if matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now, settings);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, settings: &GroupSettings) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                m.answer_sync(SyncOutcome::error(ResponseError::RebalanceInProgress));
            }
        }
        self.pending_sync.clear();
        self.sync_deadline = None;
        let rebalance = self.max_rebalance_timeout();
        let delay = settings.initial_rebalance_delay;
        if self.state == GroupState::Empty && !delay.is_zero() {
            self.initial_delay = Some(InitialDelay {
                delay,
                remaining: rebalance.saturating_sub(delay),
                new_member_added: false,
            });
            self.join_deadline = Some(now + delay);
        } else {
            self.initial_delay = None;
            self.join_deadline = Some(now + rebalance);
        }
        self.state = GroupState::PreparingRebalance;
    }

    /// Complete the join phase if every member has rejoined and no
    /// MEMBER_ID_REQUIRED id is outstanding (not during the initial delay,
    /// which always runs to its deadline).
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance || self.initial_delay.is_some() {
            return;
        }
        if self.pending_members.is_empty() && self.members.values().all(|m| m.join_waiter.is_some())
        {
            self.complete_join(now);
        }
    }

    /// Form the next generation from the members that rejoined.
    fn complete_join(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member_only(&id);
        }
        self.initial_delay = None;
        self.join_deadline = None;
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.pending_sync = self.members.keys().cloned().collect();
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.outcome_for(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
                m.answer_join(outcome);
            }
        }
    }

    /// Remove a member without touching the state (waiters get
    /// UNKNOWN_MEMBER_ID).
    fn remove_member_only(&mut self, id: &str) {
        let Some(mut m) = self.members.remove(id) else {
            return;
        };
        m.answer_join(JoinOutcome::error(ResponseError::UnknownMemberId, id));
        m.answer_sync(SyncOutcome::error(ResponseError::UnknownMemberId));
        if let Some(i) = &m.instance_id
            && self.static_members.get(i).is_some_and(|cur| cur == id)
        {
            self.static_members.remove(i);
        }
        self.pending_sync.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// Remove a member (left, expired) and move the group on: a stable or
    /// completing group rebalances; a preparing one may now be complete.
    fn remove_member(&mut self, id: &str, now: Instant, settings: &GroupSettings) {
        self.remove_member_only(id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, settings);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Handle a SyncGroup.
    pub fn sync(&mut self, req: SyncRequest, now: Instant) -> Reply<SyncOutcome> {
        let id = req.member_id.as_str();
        if self.is_fenced(id, req.group_instance_id.as_deref()) {
            return Reply::Now(SyncOutcome::error(ResponseError::FencedInstanceId));
        }
        if !self.members.contains_key(id) {
            return Reply::Now(SyncOutcome::error(ResponseError::UnknownMemberId));
        }
        if req.generation != self.generation {
            return Reply::Now(SyncOutcome::error(ResponseError::IllegalGeneration));
        }
        let type_mismatch = req
            .protocol_type
            .as_ref()
            .is_some_and(|t| self.protocol_type.as_ref() != Some(t));
        let name_mismatch = req
            .protocol_name
            .as_ref()
            .is_some_and(|n| self.protocol_name.as_ref() != Some(n));
        if type_mismatch || name_mismatch {
            return Reply::Now(SyncOutcome::error(ResponseError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Reply::Now(SyncOutcome::error(ResponseError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                Reply::Now(SyncOutcome::error(ResponseError::RebalanceInProgress))
            }
            GroupState::CompletingRebalance => {
                self.synced(id, now);
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(id) {
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() == Some(id) {
                    let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    self.state = GroupState::Stable;
                    let protocol_type = self.protocol_type.clone();
                    let protocol_name = self.protocol_name.clone();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                        let outcome = SyncOutcome {
                            error: 0,
                            protocol_type: protocol_type.clone(),
                            protocol_name: protocol_name.clone(),
                            assignment: m.assignment.clone(),
                        };
                        m.answer_sync(outcome);
                    }
                }
                Reply::Later(rx, self.waiter_bound())
            }
            GroupState::Stable => {
                self.synced(id, now);
                Reply::Now(SyncOutcome {
                    error: 0,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    assignment: self
                        .members
                        .get(id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default(),
                })
            }
        }
    }

    fn synced(&mut self, id: &str, now: Instant) {
        self.touch(id, now);
        self.pending_sync.remove(id);
        if self.pending_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    /// Handle a Heartbeat: the error code.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> ResponseErrorCode {
        if self.is_fenced(member_id, instance_id) {
            return ResponseError::FencedInstanceId.code();
        }
        if !self.members.contains_key(member_id) {
            return ResponseError::UnknownMemberId.code();
        }
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => ResponseError::UnknownMemberId.code(),
            GroupState::PreparingRebalance => {
                self.touch(member_id, now);
                ResponseError::RebalanceInProgress.code()
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(member_id, now);
                0
            }
        }
    }

    /// Handle one member of a LeaveGroup: the error code.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        settings: &GroupSettings,
    ) -> ResponseErrorCode {
        let id = match instance_id {
            Some(i) => match self.static_members.get(i) {
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return ResponseError::FencedInstanceId.code();
                }
                Some(current) => current.clone(),
                None => return ResponseError::UnknownMemberId.code(),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&id).is_some() {
            self.try_complete_join(now);
            return 0;
        }
        if !self.members.contains_key(&id) {
            return ResponseError::UnknownMemberId.code();
        }
        self.remove_member(&id, now, settings);
        0
    }

    /// Validate an OffsetCommit against the group (Kafka's rules): 0 if the
    /// commit may proceed.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> ResponseErrorCode {
        if self.state == GroupState::Dead {
            return ResponseError::CoordinatorNotAvailable.code();
        }
        if self.is_fenced(member_id, instance_id) {
            return ResponseError::FencedInstanceId.code();
        }
        if generation < 0 && self.state == GroupState::Empty {
            // A simple consumer (manual assignment): no membership to check.
            return 0;
        }
        if self.state == GroupState::CompletingRebalance {
            return ResponseError::RebalanceInProgress.code();
        }
        if !self.members.contains_key(member_id) {
            return ResponseError::UnknownMemberId.code();
        }
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        self.touch(member_id, now);
        0
    }

    /// Deadlines: expire sessions and KIP-394 ids, complete a join phase or
    /// end a sync phase whose deadline passed.
    pub fn tick(&mut self, now: Instant, settings: &GroupSettings) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && m.last_seen + m.session_timeout <= now
            })
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(&id, now, settings);
        }
        let before = self.pending_members.len();
        self.pending_members.retain(|_, expiry| *expiry > now);
        if self.pending_members.len() != before {
            self.try_complete_join(now);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline.is_some_and(|d| d <= now)
        {
            match self.initial_delay {
                Some(d) if d.new_member_added && !d.remaining.is_zero() => {
                    let step = d.delay.min(d.remaining);
                    self.initial_delay = Some(InitialDelay {
                        delay: d.delay,
                        remaining: d.remaining - step,
                        new_member_added: false,
                    });
                    self.join_deadline = Some(now + step);
                }
                _ => self.complete_join(now),
            }
        }
        if matches!(
            self.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) && self.sync_deadline.is_some_and(|d| d <= now)
        {
            self.sync_deadline = None;
            let laggards: Vec<String> =
                std::mem::take(&mut self.pending_sync).into_iter().collect();
            for id in laggards {
                tracing::info!(group = %self.id, member = %id, "member did not sync in time");
                self.remove_member(&id, now, settings);
            }
        }
    }

    /// Answer every parked request (broker stopping).
    pub fn release_waiters(&mut self) {
        for m in self.members.values_mut() {
            m.answer_join(JoinOutcome::error(
                ResponseError::NotCoordinator,
                m.id.clone(),
            ));
            m.answer_sync(SyncOutcome::error(ResponseError::NotCoordinator));
        }
    }

    /// Members as DescribeGroups reports them: metadata and assignment only
    /// in the Stable state, as Kafka does.
    pub fn member_summaries(&self) -> Vec<MemberSummary> {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| MemberSummary {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata_for(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect()
    }

    /// Topics the members of a "consumer" group subscribe to, from their
    /// metadata (ConsumerProtocolSubscription). None if some member's
    /// metadata cannot be read: then every topic counts as subscribed.
    pub fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            let metadata = match &self.protocol_name {
                Some(p) => m.metadata_for(p),
                None => m.protocols.first().map(|(_, b)| b.clone())?,
            };
            for t in decode_subscription(&metadata)? {
                topics.insert(t);
            }
        }
        Some(topics)
    }
}

/// A Kafka error code (0 = none).
pub type ResponseErrorCode = i16;

/// The topics of a consumer member's subscription: `version i16` then
/// ConsumerProtocolSubscription of that version (capped at the newest the
/// crate knows; newer versions only append fields).
pub fn decode_subscription(metadata: &Bytes) -> Option<Vec<String>> {
    if metadata.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([metadata[0], metadata[1]]);
    if version < 0 {
        return None;
    }
    let mut body = metadata.slice(2..);
    let sub = ConsumerProtocolSubscription::decode(&mut body, version.min(3)).ok()?;
    Some(sub.topics.into_iter().map(|t| t.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(delay_ms: u64) -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay: Duration::from_millis(delay_ms),
        }
    }

    fn join_req(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            group_instance_id: None,
            require_known_member_id: false,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from_static(b"meta")))
                .collect(),
        }
    }

    fn now_outcome<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(t) => t,
            Reply::Later(..) => panic!("expected an immediate answer"),
        }
    }

    fn later_outcome<T>(r: Reply<T>) -> T {
        match r {
            Reply::Later(mut rx, _) => rx
                .try_recv()
                .expect("not cancelled")
                .expect("answered already"),
            Reply::Now(_) => panic!("expected a parked answer"),
        }
    }

    #[test]
    fn two_members_form_a_generation_and_sync() {
        let s = settings(0);
        let t0 = Instant::now();
        let mut g = Group::new("g".into());
        let Reply::Later(mut rx1, _) = g.join(join_req("", &["range", "roundrobin"]), t0, &s)
        else {
            panic!()
        };
        // One member, no delay: the generation forms at once.
        let o1 = rx1.try_recv().unwrap().unwrap();
        assert_eq!((o1.error, o1.generation), (0, 1));
        assert_eq!(o1.leader, o1.member_id);
        assert_eq!(o1.protocol_name.as_deref(), Some("range"));
        // The leader syncs: stable.
        let sync = later_outcome(g.sync(
            SyncRequest {
                member_id: o1.member_id.clone(),
                group_instance_id: None,
                generation: 1,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(o1.member_id.clone(), Bytes::from_static(b"a1"))],
            },
            t0,
        ));
        assert_eq!(&sync.assignment[..], b"a1");
        assert_eq!(g.state, GroupState::Stable);
        // A second member joins: rebalance; the first sees it on heartbeat.
        let r2 = g.join(join_req("", &["roundrobin"]), t0, &s);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&o1.member_id, None, 1, t0),
            ResponseError::RebalanceInProgress.code()
        );
        let r1 = g.join(join_req(&o1.member_id, &["range", "roundrobin"]), t0, &s);
        let o1 = later_outcome(r1);
        let o2 = later_outcome(r2);
        assert_eq!(o1.generation, 2);
        assert_eq!(o1.members.len(), 2, "leader sees both");
        assert!(o2.members.is_empty());
        // Only roundrobin is common.
        assert_eq!(o2.protocol_name.as_deref(), Some("roundrobin"));
        // Follower syncs first and waits for the leader.
        let Reply::Later(mut w2, _) = g.sync(
            SyncRequest {
                member_id: o2.member_id.clone(),
                group_instance_id: None,
                generation: 2,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![],
            },
            t0,
        ) else {
            panic!()
        };
        assert!(w2.try_recv().unwrap().is_none());
        let _ = g.sync(
            SyncRequest {
                member_id: o1.member_id.clone(),
                group_instance_id: None,
                generation: 2,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(o2.member_id.clone(), Bytes::from_static(b"a2"))],
            },
            t0,
        );
        assert_eq!(&w2.try_recv().unwrap().unwrap().assignment[..], b"a2");
        assert_eq!(
            g.heartbeat(&o2.member_id, None, 1, t0),
            ResponseError::IllegalGeneration.code()
        );
        // Session expiry of the follower triggers a rebalance.
        g.heartbeat(&o1.member_id, None, 2, t0 + Duration::from_secs(9));
        g.tick(t0 + Duration::from_secs(11), &s);
        assert_eq!(g.member_count(), 1);
        assert_eq!(g.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn kip394_member_id_required_then_join() {
        let s = settings(0);
        let t0 = Instant::now();
        let mut g = Group::new("g".into());
        let mut req = join_req("", &["range"]);
        req.require_known_member_id = true;
        let o = now_outcome(g.join(req.clone(), t0, &s));
        assert_eq!(o.error, ResponseError::MemberIdRequired.code());
        assert!(!o.member_id.is_empty());
        req.member_id = o.member_id.clone();
        let o2 = later_outcome(g.join(req, t0, &s));
        assert_eq!((o2.error, o2.member_id), (0, o.member_id));
    }

    #[test]
    fn initial_delay_waits_and_extends() {
        let s = settings(100);
        let t0 = Instant::now();
        let mut g = Group::new("g".into());
        let Reply::Later(mut a, _) = g.join(join_req("", &["range"]), t0, &s) else {
            panic!()
        };
        assert!(a.try_recv().unwrap().is_none(), "waits for the delay");
        let Reply::Later(mut b, _) = g.join(join_req("", &["range"]), t0, &s) else {
            panic!()
        };
        g.tick(t0 + Duration::from_millis(100), &s);
        assert!(
            a.try_recv().unwrap().is_none(),
            "a new member extended the delay"
        );
        g.tick(t0 + Duration::from_millis(200), &s);
        assert_eq!(a.try_recv().unwrap().unwrap().generation, 1);
        assert_eq!(b.try_recv().unwrap().unwrap().generation, 1);
    }

    #[test]
    fn static_member_replaces_and_fences_old_id() {
        let s = settings(0);
        let t0 = Instant::now();
        let mut g = Group::new("g".into());
        let mut req = join_req("", &["range"]);
        req.group_instance_id = Some("i1".into());
        let o = later_outcome(g.join(req.clone(), t0, &s));
        let _ = g.sync(
            SyncRequest {
                member_id: o.member_id.clone(),
                group_instance_id: Some("i1".into()),
                generation: o.generation,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(o.member_id.clone(), Bytes::from_static(b"x"))],
            },
            t0,
        );
        // Another static member, so the first is a follower.
        let mut req2 = join_req("", &["range"]);
        req2.group_instance_id = Some("i2".into());
        let r2 = g.join(req2, t0, &s);
        let o1 = later_outcome(g.join(
            JoinRequest {
                member_id: o.member_id.clone(),
                ..req.clone()
            },
            t0,
            &s,
        ));
        let o2 = later_outcome(r2);
        let leader = o1.leader.clone();
        let follower = if leader == o1.member_id { o2 } else { o1 };
        let follower_instance = if follower.member_id.starts_with("i1") {
            "i1"
        } else {
            "i2"
        };
        // The follower restarts without its member id.
        let mut again = join_req("", &["range"]);
        again.group_instance_id = Some(follower_instance.into());
        let _ = g.sync(
            SyncRequest {
                member_id: leader.clone(),
                group_instance_id: None,
                generation: follower.generation,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![],
            },
            t0,
        );
        assert_eq!(g.state, GroupState::Stable);
        let replaced = now_outcome(g.join(again, t0, &s));
        assert_eq!(replaced.error, 0);
        assert_ne!(replaced.member_id, follower.member_id);
        assert_eq!(g.state, GroupState::Stable, "no rebalance");
        assert_eq!(
            g.heartbeat(
                &follower.member_id,
                Some(follower_instance),
                follower.generation,
                t0
            ),
            ResponseError::FencedInstanceId.code()
        );
    }

    #[test]
    fn subscription_topics_decode() {
        let sub = ConsumerProtocolSubscription::default().with_topics(vec![
            kafka_protocol::protocol::StrBytes::from_static_str("t1"),
        ]);
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&1i16.to_be_bytes());
        kafka_protocol::protocol::Encodable::encode(&sub, &mut buf, 1).unwrap();
        assert_eq!(
            decode_subscription(&buf.freeze()),
            Some(vec!["t1".to_string()])
        );
        assert_eq!(decode_subscription(&Bytes::from_static(b"\x00")), None);
    }
}
