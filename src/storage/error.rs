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
}

impl StorageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    /// The Kafka protocol error code for this error.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            StorageError::Io { .. } => 56,              // KAFKA_STORAGE_ERROR
            StorageError::CorruptBatch(_) => 2,         // CORRUPT_MESSAGE
            StorageError::UnsupportedMagic(_) => 43,    // UNSUPPORTED_FOR_MESSAGE_FORMAT
            StorageError::BatchTooLarge { .. } => 10,   // MESSAGE_TOO_LARGE
            StorageError::InvalidRecord(_) => 87,       // INVALID_RECORD
            StorageError::OffsetOutOfRange { .. } => 1, // OFFSET_OUT_OF_RANGE
            StorageError::Closed => 6,                  // NOT_LEADER_OR_FOLLOWER
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
