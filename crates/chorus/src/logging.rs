//! Tracing setup: `text` or `json`, filtered `RUST_LOG`-style.

use chorus_config::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_env(chorus_config::env::RUST_LOG)
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
