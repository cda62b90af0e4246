//! Telemetry: logging (tracing with a text or JSON formatter, here, and a filter that can be
//! changed while the agent runs: [`log_filter`], [`set_log_filter`]) and the Prometheus
//! [`metrics`].

pub(crate) mod metrics;

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// The installed filter: a handle to swap it, and its text.
struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    text: Mutex<String>,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

/// Why a log filter could not be set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogFilterError {
    /// The directives do not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Invalid {
        /// The text given.
        filter: String,
        /// What the parser said.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// No directives were given.
    #[error("empty log filter: give directives like `info` or `info,iamlet::audit=off`")]
    Empty,
    /// Logging was not set up by [`init`] (a test, or a second subscriber).
    #[error("logging was not initialised by iamlet; its filter cannot be changed")]
    NotInitialised,
    /// The subscriber is gone.
    #[error("the log filter could not be replaced: {0}")]
    Reload(#[source] reload::Error),
}

/// Installs the global subscriber. `filter` was validated by `config`.
pub fn init(format: LogFormat, filter: &str) {
    let (filter_text, env_filter) = match EnvFilter::try_new(filter) {
        Ok(f) => (filter.to_owned(), f),
        Err(_) => ("info".to_owned(), EnvFilter::new("info")),
    };
    let (filter_layer, handle) = reload::Layer::new(env_filter);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let result = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    match result {
        Ok(()) => {
            let _ = FILTER.set(Filter {
                handle,
                text: Mutex::new(filter_text),
            });
        }
        Err(e) => eprintln!("iamlet: logging was already initialised: {e}"),
    }
}

/// The log filter in force (`None`: logging was not set up by [`init`]).
pub(crate) fn log_filter() -> Option<String> {
    FILTER.get().map(|f| {
        f.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    })
}

/// Replaces the log filter (the `--log` syntax) while the agent runs; gives the old one.
pub(crate) fn set_log_filter(filter: &str) -> Result<String, LogFilterError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err(LogFilterError::Empty);
    }
    let parsed = EnvFilter::try_new(filter).map_err(|source| LogFilterError::Invalid {
        filter: filter.to_owned(),
        source,
    })?;
    let installed = FILTER.get().ok_or(LogFilterError::NotInitialised)?;
    let mut text = installed
        .text
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    installed
        .handle
        .reload(parsed)
        .map_err(LogFilterError::Reload)?;
    Ok(std::mem::replace(&mut *text, filter.to_owned()))
}
