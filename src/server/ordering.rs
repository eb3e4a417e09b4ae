//! Requests on one connection take effect in the order they were sent.
//!
//! The Kafka protocol promises that "on a single TCP connection, requests
//! will be processed in the order they are sent". Kafka keeps it by reading
//! one request at a time; Sluice keeps up to `IN_FLIGHT_PER_CONNECTION_MAX`
//! requests of a connection in flight (responses go out in request order,
//! `connection.rs`), so it keeps the order of their *effects* here. Each
//! request is one of three kinds ([`kind_of`]):
//!
//! - **Pipelined write** (Produce, OffsetCommit): waits until the previous
//!   write of the connection is *placed*, then routes its work and hands it
//!   to the owning shards (`Shard::send_on`), then marks itself placed
//!   ([`Completion::placed`]) and waits for durability while later requests
//!   go ahead. Placement is the ordering point: jobs from one shard to
//!   another travel one FIFO channel and are called by the target in
//!   arrival order; there the synchronous part of the job takes the write's
//!   place in line (`PartitionLog::append` assigns offsets or queues FIFO for
//!   room; `GroupCoordinator::commit` enters its group's `write_order`). So
//!   writes to one partition get offsets, and commits of one group apply,
//!   in request order, while their fsyncs are shared (group commit).
//! - **Read** (Fetch, ListOffsets, OffsetFetch, Metadata that cannot create
//!   topics, the Describe/List APIs, FindCoordinator, ApiVersions): waits
//!   until every earlier write and barrier of the connection has *completed*
//!   (its response is ready), so it sees their effects; reads overlap each
//!   other and later writes.
//! - **Barrier** (everything else that changes state: topic and config
//!   changes, DeleteRecords, InitProducerId, the transaction APIs, JoinGroup, SyncGroup,
//!   Heartbeat, LeaveGroup, DeleteGroups, OffsetDelete, and Metadata that may
//!   auto-create topics): waits until every earlier request has completed,
//!   and every later request waits until it has. This is Kafka's own
//!   one-at-a-time rule, kept for the requests whose effects span shards or
//!   whose order with other requests clients rely on (a CreateTopics then a
//!   Produce sees the topic).
//!
//! Bounded: a connection holds at most `IN_FLIGHT_PER_CONNECTION_MAX`
//! requests, so each list below holds at most that many signals.

use std::cell::Cell;
use std::rc::Rc;

use kafka_protocol::messages::RequestKind;

use crate::runtime::Notify;

/// How a request is ordered against the others of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    PipelinedWrite,
    Barrier,
}

/// The ordering kind of `request`; `auto_create_topics` is the broker's
/// setting (a Metadata request that may create topics is a barrier).
pub fn kind_of(request: &RequestKind, auto_create_topics: bool) -> Kind {
    match request {
        RequestKind::Produce(_) | RequestKind::OffsetCommit(_) => Kind::PipelinedWrite,
        RequestKind::Metadata(r) => {
            let names_topics = r.topics.as_ref().is_some_and(|t| !t.is_empty());
            if names_topics && r.allow_auto_topic_creation && auto_create_topics {
                Kind::Barrier
            } else {
                Kind::Read
            }
        }
        RequestKind::ApiVersions(_)
        | RequestKind::Fetch(_)
        | RequestKind::ListOffsets(_)
        | RequestKind::OffsetForLeaderEpoch(_)
        | RequestKind::OffsetFetch(_)
        | RequestKind::FindCoordinator(_)
        | RequestKind::ListGroups(_)
        | RequestKind::DescribeGroups(_)
        | RequestKind::DescribeProducers(_)
        | RequestKind::DescribeConfigs(_)
        | RequestKind::DescribeCluster(_)
        | RequestKind::DescribeLogDirs(_)
        | RequestKind::DescribeTransactions(_)
        | RequestKind::ListTransactions(_) => Kind::Read,
        _ => Kind::Barrier,
    }
}

/// A one-way flag that tasks can wait for.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    notify: Notify,
}

impl Signal {
    fn set(&self) {
        if !self.set.replace(true) {
            self.notify.notify_all();
        }
    }

    async fn wait(&self) {
        while !self.set.get() {
            let listener = self.notify.listen();
            if self.set.get() {
                return;
            }
            listener.await;
        }
    }
}

/// What a request waits for before its handler runs.
pub struct Prerequisites(Vec<Rc<Signal>>);

impl Prerequisites {
    pub async fn wait(self) {
        for signal in &self.0 {
            signal.wait().await;
        }
    }
}

/// A request's own signals: placed (later writes may go) and completed
/// (later reads and barriers may go). Dropping it sets both, so a handler
/// that fails or is cancelled never holds its connection up.
pub struct Completion {
    placed: Rc<Signal>,
    done: Rc<Signal>,
}

impl Completion {
    /// The request's effects have their place in line on every shard they
    /// touch: the connection's next write may start. Called by pipelined
    /// writes after handing their work to the owners; for the other kinds
    /// placement is completion.
    pub fn placed(&self) {
        self.placed.set();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.placed.set();
        self.done.set();
    }
}

/// One connection's order book, kept by its reader task.
#[derive(Default)]
pub struct Sequencer {
    /// Placement of the latest write or barrier.
    last_placed: Option<Rc<Signal>>,
    /// Completions of writes and barriers not known to be complete.
    writes: Vec<Rc<Signal>>,
    /// Completions of every request not known to be complete.
    all: Vec<Rc<Signal>>,
}

impl Sequencer {
    /// Admit the next request read from the connection: what it must wait
    /// for, and its own signals.
    pub fn admit(&mut self, kind: Kind) -> (Prerequisites, Completion) {
        self.writes.retain(|s| !s.set.get());
        self.all.retain(|s| !s.set.get());
        let done = Rc::new(Signal::default());
        let (waits, placed) = match kind {
            // Nothing waits for a read's placement: it is its completion.
            Kind::Read => (self.writes.clone(), done.clone()),
            Kind::PipelinedWrite => {
                let placed = Rc::new(Signal::default());
                let waits = self
                    .last_placed
                    .replace(placed.clone())
                    .into_iter()
                    .collect();
                (waits, placed)
            }
            Kind::Barrier => {
                // Placed only when complete: later writes wait for it all.
                self.last_placed = Some(done.clone());
                (self.all.clone(), done.clone())
            }
        };
        if kind != Kind::Read {
            self.writes.push(done.clone());
        }
        self.all.push(done.clone());
        (Prerequisites(waits), Completion { placed, done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(p: &Prerequisites) -> usize {
        p.0.iter().filter(|s| !s.set.get()).count()
    }

    #[test]
    fn writes_wait_for_placement_reads_for_completion() {
        let mut seq = Sequencer::default();
        let (p1, w1) = seq.admit(Kind::PipelinedWrite);
        assert_eq!(pending(&p1), 0);
        let (p2, w2) = seq.admit(Kind::PipelinedWrite);
        let (p3, r3) = seq.admit(Kind::Read);
        assert_eq!(
            pending(&p2),
            1,
            "the second write waits for the first's placement"
        );
        assert_eq!(pending(&p3), 2, "the read waits for both writes");
        w1.placed();
        assert_eq!(pending(&p2), 0);
        assert_eq!(pending(&p3), 2, "placed is not complete");
        drop(w1);
        drop(w2);
        assert_eq!(pending(&p3), 0);
        // A barrier waits for everything before it, the read included.
        let (p4, b4) = seq.admit(Kind::Barrier);
        assert_eq!(pending(&p4), 1);
        let (p5, _w5) = seq.admit(Kind::PipelinedWrite);
        let (p6, _r6) = seq.admit(Kind::Read);
        drop(r3);
        assert_eq!(pending(&p4), 0);
        assert_eq!(
            pending(&p5),
            1,
            "a write after a barrier waits for its completion"
        );
        assert_eq!(
            pending(&p6),
            2,
            "the read waits for the barrier and the write"
        );
        drop(b4);
        assert_eq!(pending(&p5), 0);
        assert_eq!(
            pending(&p6),
            1,
            "the read still waits for the write before it"
        );
    }

    #[test]
    fn a_write_does_not_wait_for_an_earlier_read() {
        let mut seq = Sequencer::default();
        let (_p1, _r1) = seq.admit(Kind::Read);
        let (p2, _w2) = seq.admit(Kind::PipelinedWrite);
        assert_eq!(pending(&p2), 0);
    }

    #[test]
    fn book_stays_bounded_by_requests_in_flight() {
        let mut seq = Sequencer::default();
        for _ in 0..1000 {
            let (_p, c) = seq.admit(Kind::Barrier);
            drop(c);
        }
        assert!(seq.all.len() <= 1 && seq.writes.len() <= 1);
    }
}
