//! Tracing setup: `text` or `json`, filtered `RUST_LOG`-style.

use chorus_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber. The configured filter must parse (a typo would otherwise drop
/// its directives with a warning and log at another level than asked).
pub fn init(format: LogFormat, default_filter: &str) -> anyhow::Result<()> {
    let configured = EnvFilter::try_new(default_filter)
        .map_err(|e| anyhow::anyhow!("invalid config: log_filter {default_filter:?}: {e}"))?;
    let filter = EnvFilter::try_from_env(chorus_config::env::RUST_LOG).unwrap_or(configured);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
        }
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
