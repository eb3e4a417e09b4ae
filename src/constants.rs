//! Every hard limit of the broker in one place. Configurable limits have their
//! default here and their bounds checked in `config.rs`.

/// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;
/// Largest record batch accepted (Kafka's `message.max.bytes`).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1024 * 1024 + 12;
/// Connections one shard serves at once; more are accepted and closed at once.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: usize = 4096;
/// Requests read ahead of the one being answered on one connection.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 16;
/// Depth of each shard-to-shard channel (messages, not bytes).
pub const CROSS_SHARD_QUEUE_DEPTH: usize = 1024;
/// Segment size at which the active segment is rolled (Kafka's `segment.bytes`).
pub const SEGMENT_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Age at which the active segment is rolled (Kafka's `segment.ms`, 7 days).
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// How long a partition keeps a sealed segment (Kafka's `retention.ms`, 7 days).
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 3600 * 1000;
/// Period of each shard's retention task (deletes expired sealed segments).
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// File in a partition directory holding a log start offset that
/// DeleteRecords moved inside the first segment.
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";
/// Bytes of log between two sparse index entries.
pub const INDEX_INTERVAL_BYTES: u32 = 4096;
/// Bytes appended but not yet written to disk, per partition, before producers wait.
pub const PENDING_WRITE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A partition whose write rounds average fewer bytes than this zero-fills the space ahead of
/// its writes instead of preallocating it: on ext4 a direct write into preallocated space is an
/// extent conversion on an io_uring worker thread, one context switch per write (measured at
/// 1,024 partitions: 58 MB/s preallocated, 135 MB/s zero-filled; at 16 partitions, large
/// rounds, zero-filling everything cost 19%).
pub const ZERO_FILL_BELOW_BYTES: usize = 64 * 1024;
/// Recently appended batches kept in memory per partition to serve tailing consumers: at most
/// this, and at most the partition's share of [`TAIL_CACHE_SHARD_BYTES`].
pub const TAIL_CACHE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Tail-cache memory of one shard, shared equally by the partitions it owns (so memory does
/// not grow with the partition count: 10,000 partitions on a shard get 32 KiB each).
pub const TAIL_CACHE_SHARD_BYTES: usize = 256 * 1024 * 1024;
/// The smallest share of [`TAIL_CACHE_SHARD_BYTES`] a partition gets.
pub const TAIL_CACHE_BYTES_MIN: usize = 32 * 1024;
/// Longest time a Fetch may wait (bounds `max_wait_ms` from clients).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Largest number of partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Memory each shard registers with io_uring for DMA buffers.
pub const IO_MEMORY_BYTES_PER_SHARD: usize = 4 * 1024 * 1024;
/// Batches remembered per idempotent producer per partition for duplicate
/// detection (Kafka's `NUM_BATCHES_TO_RETAIN`; clients keep at most 5 in flight).
pub const PRODUCER_BATCHES_KEPT: usize = 5;
/// A producer whose last batch is older than this is forgotten when its
/// partition takes a state snapshot (Kafka's `producer.id.expiration.ms`).
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 3600 * 1000;
/// Producer-state snapshot files kept per partition at least (the newest, and
/// one to fall back on if the newest is damaged); besides, one per live segment
/// (`recovery::remove_stale_snapshots`).
pub const PRODUCER_SNAPSHOTS_KEPT: usize = 2;
/// Producer ids the controller reserves per durable write of
/// `__cluster/producer_ids.json` (Kafka's block size).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

// Consumer groups (src/group/).
/// Name of the internal topic holding committed offsets (Kafka's name).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Name of the internal topic holding transaction states (Kafka's name).
pub const TXN_TOPIC: &str = "__transaction_state";
/// Default partition count of the offsets topic (`offsets.topic.num.partitions`).
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: i32 = 16;
/// Segment size of `__consumer_offsets` (Kafka's offsets.topic.segment.bytes).
pub const OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT: u64 = 100 * 1024 * 1024;
/// Largest batch of offset records written at once to the offsets topic; a
/// bigger commit is split into several batches appended together.
pub const OFFSETS_BATCH_BYTES_MAX: usize = 512 * 1024;
/// `max.message.bytes` of the offsets topic (one record is at most a few KiB).
pub const OFFSETS_TOPIC_MESSAGE_BYTES_MAX: usize = 2 * OFFSETS_BATCH_BYTES_MAX;
/// Longest committed-offset metadata string (`offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Longest group id or group instance id accepted.
pub const GROUP_ID_LEN_MAX: usize = 1024;
/// Members in one group (`group.max.size`); more get GROUP_MAX_SIZE_REACHED.
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// Groups one shard coordinates; new groups past this get COORDINATOR_NOT_AVAILABLE.
pub const GROUPS_PER_SHARD_MAX: usize = 10_000;
/// Committed offsets kept per group; a commit adding partitions past this gets
/// INVALID_COMMIT_OFFSET_SIZE for them.
pub const OFFSETS_PER_GROUP_MAX: usize = 100_000;
/// Protocols one member may list in JoinGroup.
pub const PROTOCOLS_PER_MEMBER_MAX: usize = 32;
/// Bytes of protocol metadata one member may send in JoinGroup (all protocols).
pub const MEMBER_METADATA_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of assignment one member may receive through SyncGroup.
pub const MEMBER_ASSIGNMENT_BYTES_MAX: usize = 1024 * 1024;
/// Period of each shard's group ticker: expires sessions, completes rebalances
/// whose deadline passed. Deadlines are honoured to within this.
pub const GROUP_TICK_MS: u64 = 100;
/// KIP-394 member ids handed out (MEMBER_ID_REQUIRED) and not yet used, per group.
pub const GROUP_PENDING_MEMBERS_MAX: usize = 1000;

// Metrics endpoint (src/metrics/).
/// Largest HTTP request head a scrape may send.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Longest a scrape connection may take to send its request head.
pub const METRICS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest a scrape waits for every shard's snapshot before answering 503.
pub const METRICS_SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Scrape connections served at once; more are closed at accept.
pub const METRICS_CONNECTIONS_MAX: usize = 16;

const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(PENDING_WRITE_BYTES_MAX > MESSAGE_BYTES_MAX_DEFAULT);
const _: () = assert!(PRODUCER_BATCHES_KEPT > 0 && PRODUCER_BATCHES_KEPT <= u8::MAX as usize);
const _: () = assert!(PRODUCER_SNAPSHOTS_KEPT >= 2);
const _: () = assert!(PRODUCER_ID_BLOCK_SIZE > 0);

/// Under the shard journal: a partition writes the batches waiting behind it to its segment
/// once they add up to this (one larger write per partition instead of one per round).
pub const BEHIND_WRITE_BYTES: usize = 256 << 10;

/// Under the shard journal: a partition's round smaller than this goes through it; a larger
/// one is written to its segment directly (it fills its own write, and a second copy of its
/// bytes would cost more than the journal saves).
pub const JOURNAL_BELOW_BYTES: usize = 32 << 10;

/// Most brokers in a cluster (`seed_servers`).
pub const CLUSTER_BROKERS_MAX: usize = 64;
/// Raft messages queued per peer broker and shard before new ones are dropped (Raft treats a
/// drop as a lossy network and retries).
pub const RPC_QUEUE_MESSAGES_MAX: usize = 8192;
/// Raft messages queued for one replica before new ones are dropped.
pub const REPLICA_INBOX_MAX: usize = 4096;
/// Longest a metadata change (a CreateTopics, a broker registering) waits to be committed and
/// applied before it is answered as timed out.
pub const METADATA_COMMIT_TIMEOUT_MS: u64 = 10_000;
/// How many times a controller operation built on a stale catalog is rebuilt and proposed
/// again when another metadata change came first.
pub const METADATA_CONFLICT_RETRIES: usize = 10;

/// `min.cleanable.dirty.ratio` default (Kafka's `log.cleaner.min.cleanable.ratio`).
pub const MIN_CLEANABLE_DIRTY_RATIO_DEFAULT: f64 = 0.5;

/// `delete.retention.ms` default (Kafka's `log.cleaner.delete.retention.ms`): one day.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;

/// Largest records section the log cleaner (and the key check of compacted topics) lets one
/// batch decompress to: a small compressed batch cannot make it allocate more.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;

/// Largest read and write of the log cleaner.
pub const CLEANER_IO_CHUNK_BYTES: usize = 1 << 20;
