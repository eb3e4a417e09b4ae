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
/// Bytes of log between two sparse index entries.
pub const INDEX_INTERVAL_BYTES: u32 = 4096;
/// Bytes appended but not yet written to disk, per partition, before producers wait.
pub const PENDING_WRITE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Recently appended batches kept in memory per partition to serve tailing consumers.
pub const TAIL_CACHE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest time a Fetch may wait (bounds `max_wait_ms` from clients).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Largest number of partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Memory each shard registers with io_uring for DMA buffers.
pub const IO_MEMORY_BYTES_PER_SHARD: usize = 4 * 1024 * 1024;

const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(PENDING_WRITE_BYTES_MAX > MESSAGE_BYTES_MAX_DEFAULT);
