//! Errors of the WAL, kept in three families: I/O failure (the disk said no), corruption (the disk gave back
//! something we did not write), and caller mistakes (bad arguments, unknown partitions).

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::TopicPartition;

/// Result alias for the WAL.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system failed an I/O call. Nothing is known to be lost unless the partition is poisoned.
    #[error("I/O error while {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Bytes on disk are not what the WAL wrote.
    #[error("corrupt WAL data in {} at byte {position}: {kind}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        kind: CorruptionKind,
    },

    /// An earlier write or fsync failed, so the partition's in-memory view can no longer be trusted to match
    /// the disk. Every call fails until the partition is reopened, which recovers from what is on disk.
    #[error("partition {tp} is failed after an I/O error ({cause}); reopen it to recover from disk")]
    Poisoned { tp: TopicPartition, cause: String },

    /// The requested offset is below the log start or above the high watermark.
    #[error("offset {offset} is out of range for {tp}: log start {log_start_offset}, high watermark {high_watermark}")]
    OffsetOutOfRange {
        tp: TopicPartition,
        offset: i64,
        log_start_offset: i64,
        high_watermark: i64,
    },

    /// The partition's directory is there but recovery could not open it when the WAL opened (I/O failure
    /// such as EMFILE or EACCES, or damage): it is not served, not recreated and not deleted by accident,
    /// and its checkpoint entry is kept. `cause` is the error recovery met. Opening the WAL again once the
    /// cause is removed recovers it.
    #[error(
        "partition {tp} is offline: it could not be opened ({cause}); remove the cause and reopen the WAL"
    )]
    PartitionOffline { tp: TopicPartition, cause: Arc<Error> },

    #[error("partition {0} does not exist")]
    UnknownPartition(TopicPartition),

    #[error("partition {0} already exists")]
    PartitionExists(TopicPartition),

    #[error("partition {0} was deleted")]
    PartitionDeleted(TopicPartition),

    #[error("batch payload of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { size: u64, max: u64 },

    /// The configured I/O backend cannot run here (e.g. the kernel or a container refuses io_uring).
    #[error(transparent)]
    IoBackendUnavailable(#[from] crate::io::BackendUnavailable),

    /// A caller mistake: the message says which argument and why.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An append or a new term named a term older than the partition's latest (see `terms.rs`): the
    /// caller leads, or copies, a log that has moved on.
    #[error("term {term} is older than the partition's latest term {latest}")]
    TermBehind { term: i32, latest: i32 },

    /// An append that had to land at `expected` would have got `next` (a replica copying another log
    /// is out of step with its own).
    #[error("the append was to start at offset {expected}, but the log ends at {next}")]
    OffsetMismatch { expected: i64, next: i64 },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl AsRef<Path>, position: u64, kind: CorruptionKind) -> Self {
        Error::Corrupt {
            path: path.as_ref().to_path_buf(),
            position,
            kind,
        }
    }

    /// The label under which this error is counted in `chronik_wal_errors_total`.
    pub fn kind_label(&self) -> &'static str {
        match self {
            Error::Io { source, .. } if is_storage_full(source) => "storage_full",
            Error::Io { .. } | Error::IoBackendUnavailable(_) => "io",
            Error::Corrupt { .. } => "corrupt",
            Error::Poisoned { .. } => "poisoned",
            Error::PartitionOffline { .. } => "offline",
            Error::OffsetOutOfRange { .. } => "offset_out_of_range",
            Error::UnknownPartition(_) | Error::PartitionExists(_) | Error::PartitionDeleted(_) => {
                "partition"
            }
            Error::BatchTooLarge { .. } | Error::InvalidArgument(_) => "invalid_argument",
            Error::TermBehind { .. } | Error::OffsetMismatch { .. } => "out_of_step",
        }
    }

    /// True when the disk is full: the caller may retry once space is freed.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if is_storage_full(source))
    }
}

pub(crate) fn is_storage_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// What exactly is wrong with corrupt bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    BadMagic {
        found: u32,
    },
    UnsupportedVersion {
        found: u8,
    },
    HeaderChecksum {
        stored: u32,
        computed: u32,
    },
    PayloadChecksum {
        stored: u32,
        computed: u32,
    },
    /// The frame claims more bytes than the file holds (a torn write when it is at the tail).
    Truncated {
        needed: u64,
        available: u64,
    },
    FrameTooLarge {
        len: u64,
        max: u64,
    },
    /// A header field is impossible (reserved bits set, zero record count, inverted timestamps).
    BadField {
        field: &'static str,
    },
    /// Frames are valid but offsets are not dense.
    OffsetGap {
        expected: i64,
        found: i64,
    },
    BadSegmentHeader,
    /// A segment the checkpoint or the directory implies is missing.
    MissingSegment {
        base_offset: i64,
    },
    BadIndex,
    BadCheckpoint,
    BadTerms,
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::BadMagic { found } => write!(f, "bad frame magic {found:#010x}"),
            CorruptionKind::UnsupportedVersion { found } => write!(f, "unsupported format version {found}"),
            CorruptionKind::HeaderChecksum { stored, computed } => {
                write!(
                    f,
                    "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            CorruptionKind::PayloadChecksum { stored, computed } => {
                write!(
                    f,
                    "payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            CorruptionKind::Truncated { needed, available } => {
                write!(f, "frame needs {needed} bytes but only {available} remain")
            }
            CorruptionKind::FrameTooLarge { len, max } => {
                write!(f, "frame length {len} exceeds maximum {max}")
            }
            CorruptionKind::BadField { field } => write!(f, "impossible value in header field `{field}`"),
            CorruptionKind::OffsetGap { expected, found } => {
                write!(f, "offset gap: expected base offset {expected}, found {found}")
            }
            CorruptionKind::BadSegmentHeader => write!(f, "bad segment file header"),
            CorruptionKind::MissingSegment { base_offset } => {
                write!(f, "segment with base offset {base_offset} is missing")
            }
            CorruptionKind::BadIndex => write!(f, "bad index file"),
            CorruptionKind::BadCheckpoint => write!(f, "bad checkpoint file"),
            CorruptionKind::BadTerms => write!(f, "bad terms file"),
        }
    }
}
