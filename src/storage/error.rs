//! Operating errors of the storage layer. Broken invariants are `assert!`s,
//! not variants here. The Kafka error code is chosen at the handler
//! boundary through [`StorageError::kafka_error_code`].

/// An error from a partition log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed. The log that reports it during a write or
    /// sync stops accepting appends (see `PartitionLog`); reopening runs
    /// recovery.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Bad length, bad CRC or truncated batch.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// Record format other than magic 2.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// A single batch larger than `max_message_bytes`.
    #[error("record batch of {size} bytes exceeds the limit of {max}")]
    BatchTooLarge { size: usize, max: usize },
    /// Empty records, record count mismatch.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("offset {requested} out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        high_watermark: i64,
    },
    /// The log was closed or deleted.
    #[error("partition log is closed")]
    Closed,
    /// An idempotent batch whose sequence does not continue its producer's
    /// (a gap, or a new epoch not starting at 0).
    #[error(
        "out of order sequence for producer {producer_id} epoch {epoch}: got {sequence}, expected {expected}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        expected: i32,
    },
    /// A transaction marker from a coordinator older than the one whose marker for this
    /// producer is already here (a coordinator that lost its partition's leadership).
    #[error(
        "marker of producer {producer_id} from coordinator epoch {coordinator_epoch}, \
         {current} wrote here"
    )]
    CoordinatorFenced {
        producer_id: i64,
        coordinator_epoch: i32,
        current: i32,
    },
    /// An idempotent batch from an epoch older than the producer's current
    /// one on this partition (a fenced producer).
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// The disk is full: the append got no offsets, or gave back the ones it got because
    /// they could not be written. Appends resume once space is freed, without a restart.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The log was cut back below an append before it became durable (`truncate_to`).
    #[error("the log was truncated below offset {offset} before it became durable")]
    Truncated { offset: i64 },
    /// A replicated batch that does not continue the log where it ends.
    #[error("replicated batch at offset {got} does not continue the log end {expected}")]
    NotContiguous { expected: i64, got: i64 },
}

impl StorageError {
    /// Whether this is the disk (or the quota) running out of space: a write that may succeed
    /// once space is freed, unlike an I/O error.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::DiskFull(_) => true,
            StorageError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
                    || matches!(
                        source.raw_os_error(),
                        Some(28 /* ENOSPC */ | 122 /* EDQUOT */)
                    )
            }
            _ => false,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    /// The Kafka protocol error code for this error.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            StorageError::Io { .. } => 56,                 // KAFKA_STORAGE_ERROR
            StorageError::CorruptBatch(_) => 2,            // CORRUPT_MESSAGE
            StorageError::UnsupportedMagic(_) => 43,       // UNSUPPORTED_FOR_MESSAGE_FORMAT
            StorageError::BatchTooLarge { .. } => 10,      // MESSAGE_TOO_LARGE
            StorageError::InvalidRecord(_) => 87,          // INVALID_RECORD
            StorageError::OffsetOutOfRange { .. } => 1,    // OFFSET_OUT_OF_RANGE
            StorageError::Closed => 6,                     // NOT_LEADER_OR_FOLLOWER
            StorageError::OutOfOrderSequence { .. } => 45, // OUT_OF_ORDER_SEQUENCE_NUMBER
            // Kafka answers Produce with INVALID_PRODUCER_EPOCH (not
            // PRODUCER_FENCED) since 2.7, for every Produce version.
            StorageError::InvalidProducerEpoch { .. } => 47, // INVALID_PRODUCER_EPOCH
            StorageError::CoordinatorFenced { .. } => 52,    // TRANSACTION_COORDINATOR_FENCED
            StorageError::DiskFull(_) => 56,                 // KAFKA_STORAGE_ERROR
            StorageError::Truncated { .. } => 6,             // NOT_LEADER_OR_FOLLOWER
            StorageError::NotContiguous { .. } => 1,         // OFFSET_OUT_OF_RANGE
        }
    }
}

/// Shorthand for mapping `io::Error`s with a context string.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::io(context(), e))
    }
}
