//! The admin commands: `sluice topic ...` and `sluice group ...`.
//!
//! They speak the Kafka protocol to any broker (Sluice or Apache Kafka), so they only use what
//! the broker advertises in ApiVersions, at the highest version both sides know.
//!
//! # Layout
//! - [`client`]: a small blocking Kafka client over `std::net::TcpStream`: framing, request
//!   headers, ApiVersions negotiation, bounded timeouts, one connection per broker, group
//!   coordinator lookup.
//! - [`topic`]: `topic create|list|describe|delete|alter-config`.
//! - [`group`]: `group list|describe|delete|reset-offsets`.
//! - [`table`]: column-aligned text tables for stdout.
//! - [`time`]: the RFC 3339 parser behind `--to-datetime`.
//!
//! Operating errors are [`CliError`] values; the binary turns them into a message and a
//! non-zero exit status. Output goes to a `Write` so the commands can be tested without a
//! terminal.

pub mod client;
pub mod cluster;
pub mod group;
pub mod table;
pub mod time;
pub mod topic;
pub mod txn;

use std::time::Duration;

use kafka_protocol::error::ResponseError;

pub use cluster::ClusterCommand;
pub use group::GroupCommand;
pub use topic::TopicCommand;
pub use txn::TxnCommand;

/// Default broker address of every admin command.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9092";
/// Connect timeout of one TCP connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read and write timeout of a socket: a broker that does not answer a request within this time
/// fails the command instead of hanging it. Longer than [`BROKER_OPERATION_TIMEOUT_MS`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(40);
/// `timeout_ms` sent in CreateTopics and DeleteTopics.
pub const BROKER_OPERATION_TIMEOUT_MS: i32 = 30_000;
/// Largest response frame accepted.
pub const RESPONSE_BYTES_MAX: usize = 100 * 1024 * 1024;
/// How many times a retriable coordinator error (loading, not available) is retried, with
/// [`COORDINATOR_RETRY_BACKOFF`] in between.
pub const COORDINATOR_RETRIES_MAX: u32 = 20;
pub const COORDINATOR_RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// Connection settings shared by every admin command.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Broker to bootstrap from (HOST:PORT, or a comma-separated list tried in order).
    #[arg(
        long,
        short = 'b',
        global = true,
        default_value = BOOTSTRAP_DEFAULT,
        env = "SLUICE_BOOTSTRAP_SERVER"
    )]
    pub bootstrap_server: String,
}

/// The first (for one-item requests, the only) entry of a response list, or
/// a protocol error naming what was being done and what came back empty.
pub(crate) fn first<T>(
    items: Vec<T>,
    context: impl FnOnce() -> String,
    what: &str,
) -> Result<T, CliError> {
    items.into_iter().next().ok_or_else(|| CliError::Protocol {
        context: context(),
        message: format!("empty {what}"),
    })
}

/// What can go wrong in an admin command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// TCP connect, read or write failed (including timeouts).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A request could not be encoded or a response not decoded.
    #[error("{context}: {message}")]
    Protocol { context: String, message: String },
    /// The broker answered with a Kafka error code.
    #[error("{context}: {} (error code {code}){}", error_name(*.code), detail(.message))]
    Kafka {
        context: String,
        code: i16,
        message: Option<String>,
    },
    /// The broker does not offer an API (or no version both sides know).
    #[error("{0}")]
    Unsupported(String),
    /// A group is not in a state that allows the operation.
    #[error("{0}")]
    GroupState(String),
    /// Bad command-line input the parser could not catch.
    #[error("{0}")]
    Usage(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
}

impl CliError {
    /// A [`CliError::Kafka`] for a non-zero `code`, or Ok.
    pub fn check(
        code: i16,
        message: Option<&kafka_protocol::protocol::StrBytes>,
        context: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if code == 0 {
            return Ok(());
        }
        Err(CliError::Kafka {
            context: context(),
            code,
            message: message.map(|m| m.to_string()).filter(|m| !m.is_empty()),
        })
    }

    /// The Kafka error code, if this is a broker error.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            CliError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Name of a Kafka error code, e.g. `TopicAlreadyExists`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(error) => error.to_string(),
        None => "None".to_owned(),
    }
}

fn detail(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(": {m}"),
        None => String::new(),
    }
}

/// Parses `key=value` (the value may contain `=`).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value() {
        assert_eq!(
            parse_key_value("retention.ms=1000").unwrap(),
            ("retention.ms".to_owned(), "1000".to_owned())
        );
        assert_eq!(
            parse_key_value("a==b").unwrap(),
            ("a".to_owned(), "=b".to_owned())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn kafka_error_message_names_the_code() {
        let error = CliError::Kafka {
            context: "creating topic t".into(),
            code: 36,
            message: Some("Topic 't' already exists.".into()),
        };
        assert_eq!(
            error.to_string(),
            "creating topic t: TopicAlreadyExists (error code 36): Topic 't' already exists."
        );
    }
}
