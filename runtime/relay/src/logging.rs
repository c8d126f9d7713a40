//! The relay's own logs: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`), as
//! human-readable text or as one JSON object per line (`--log-format json`). Text is coloured
//! only when stderr is a terminal and `NO_COLOR` is unset or empty, so logs written to a file
//! or a journal carry no escape codes.
//!
//! Nothing secret is ever logged: events carry names, addresses, paths and reasons, never key
//! material, tokens or query parameters.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-21T11:30:03.123Z  INFO dbward_relay: listening addr=…`
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "RUST_LOG is not a valid filter ({0}); use e.g. RUST_LOG=info or RUST_LOG=dbward_relay=debug"
    )]
    Filter(String),
    #[error("a logger is already installed in this process")]
    AlreadyInstalled,
}

/// Installs the process-wide subscriber. Call once, from `main`.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter =
        match std::env::var("RUST_LOG") {
            Ok(value) if !value.trim().is_empty() => {
                EnvFilter::try_new(&value).map_err(|e| LoggingError::Filter(e.to_string()))?
            }
            _ => EnvFilter::new("info"),
        }
        // aws-sigv4 traces the canonical request it signs, which holds the session token of
        // temporary credentials (`X-Amz-Security-Token`): never, whatever RUST_LOG says.
        .add_directive("aws_sigv4=off".parse().map_err(
            |e: tracing_subscriber::filter::ParseError| LoggingError::Filter(e.to_string()),
        )?);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

/// Whether text logs may use ANSI colour: stderr is a terminal and `NO_COLOR`
/// (<https://no-color.org>) is unset or empty.
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
