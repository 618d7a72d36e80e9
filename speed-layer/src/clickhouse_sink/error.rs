//! What can go wrong in the sink, and which of it a retry may cure.
//!
//! ClickHouse reports a failed statement as an exception text that starts with its
//! error code (`Code: 60. DB::Exception: ...`; servers of the 18.x line, Debian's,
//! write `Code: 60, e.displayText() = DB::Exception: ...`). The codes are ClickHouse's
//! `src/Common/ErrorCodes.cpp`. A code that names a passing state of the server
//! (a timeout, too many parts or queries, memory, a read-only replica, a network
//! error between servers) is retried; any other code (a syntax error, an unknown
//! table or column, a type mismatch, access denied) would fail the same way again, so
//! the batch is spilled at once and the operator alerted instead of waiting through
//! the retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Server error codes of passing states, worth a retry (ClickHouse's
/// `ErrorCodes.cpp`): `TIMEOUT_EXCEEDED` 159, `TOO_SLOW` 160,
/// `TOO_MANY_SIMULTANEOUS_QUERIES` 202, `NO_FREE_CONNECTION` 203,
/// `SOCKET_TIMEOUT` 209, `NETWORK_ERROR` 210, `ABORTED` 236,
/// `MEMORY_LIMIT_EXCEEDED` 241, `TABLE_IS_READ_ONLY` 242, `TOO_MANY_PARTS` 252,
/// `REPLICA_IS_NOT_IN_QUORUM` 285, `UNKNOWN_STATUS_OF_INSERT` 319,
/// `ALL_CONNECTION_TRIES_FAILED` 279, `ALL_REPLICAS_ARE_STALE` 369,
/// `QUERY_WAS_CANCELLED` 394, `KEEPER_EXCEPTION` 999.
const RETRIABLE_SERVER_CODES: [u32; 16] = [
    159, 160, 202, 203, 209, 210, 236, 241, 242, 252, 279, 285, 319, 369, 394, 999,
];

/// Errors of the ClickHouse sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's tasks have stopped (shutdown): rows can no longer be handed over. (A
    /// journal that failed answers with [`SinkError::Journal`] instead.)
    #[error("clickhouse sink stopped")]
    Stopped,
    /// A journal or spill file could not be written, synced or listed (a full disk,
    /// permissions). The journal's first failed write stops it for good: every later
    /// barrier answers with this error (see `journal`), so no partition stores offsets
    /// past the rows on disk.
    #[error("clickhouse journal {}: {source}", path.display())]
    Journal {
        /// The file (or directory) the operation was on.
        path: PathBuf,
        /// The operating system's error (`No space left on device`, ...); shared, as
        /// one failure answers every barrier after it.
        source: Arc<std::io::Error>,
    },
    /// A journal or spill file could not be read, or holds a line that is not a
    /// detail row.
    #[error("{}: {detail}", file.display())]
    BadFile {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// ClickHouse failed or refused an insert.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

impl SinkError {
    /// True when a retry may cure it: the network, a timeout, or a server error code
    /// of a passing state ([`RETRIABLE_SERVER_CODES`]); an answer without a code
    /// (a proxy's 502, say) too. A schema, syntax or data error is not retried.
    pub fn is_retriable(&self) -> bool {
        use clickhouse::error::Error as Ch;
        match self {
            // The journal stops at its first failed write (a retry in the process would
            // write after a hole); a restart once the disk has room is what cures it.
            SinkError::Stopped | SinkError::BadFile { .. } | SinkError::Journal { .. } => false,
            SinkError::ClickHouse(e) => match e {
                Ch::Network(_) | Ch::TimedOut => true,
                Ch::BadResponse(text) => {
                    server_code(text).is_none_or(|c| RETRIABLE_SERVER_CODES.contains(&c))
                }
                _ => false,
            },
        }
    }
}

impl SinkError {
    /// [`SinkError::Journal`] of `error` on `path`.
    pub fn journal(path: &Path, error: std::io::Error) -> Self {
        SinkError::Journal {
            path: path.to_owned(),
            source: Arc::new(error),
        }
    }
}

/// The server's error code at the start of a ClickHouse exception text, if any.
pub fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as Ch;

    fn bad(text: &str) -> SinkError {
        SinkError::ClickHouse(Ch::BadResponse(text.to_owned()))
    }

    #[test]
    fn a_schema_or_syntax_error_is_not_retried() {
        // As ClickHouse 18.16 (Debian's) and current servers word them.
        for text in [
            "Code: 60, e.displayText() = DB::Exception: Table admetrics.events_x doesn't exist., e.what() = DB::Exception",
            "Code: 16. DB::Exception: No such column campaign in table admetrics.events. (NO_SUCH_COLUMN_IN_TABLE)",
            "Code: 62. DB::Exception: Syntax error: failed at position 1. (SYNTAX_ERROR)",
            "Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)",
        ] {
            assert!(!bad(text).is_retriable(), "{text}");
        }
        assert!(!SinkError::ClickHouse(Ch::SchemaMismatch("column".into())).is_retriable());
        assert!(!SinkError::ClickHouse(Ch::NotEnoughData).is_retriable());
    }

    #[test]
    fn a_timeout_or_a_passing_server_state_is_retried() {
        assert!(SinkError::ClickHouse(Ch::TimedOut).is_retriable());
        assert!(SinkError::ClickHouse(Ch::Network("connection refused".into())).is_retriable());
        for text in [
            "Code: 159. DB::Exception: Timeout exceeded: elapsed 5.1 seconds. (TIMEOUT_EXCEEDED)",
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.",
            "Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)",
            "502 Bad Gateway",
        ] {
            assert!(bad(text).is_retriable(), "{text}");
        }
    }

    #[test]
    fn the_code_is_read_from_both_exception_formats() {
        assert_eq!(
            server_code("Code: 60, e.displayText() = DB::Exception"),
            Some(60)
        );
        assert_eq!(server_code("Code: 159. DB::Exception: Timeout"), Some(159));
        assert_eq!(server_code("Service Unavailable"), None);
    }
}
