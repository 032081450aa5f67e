//! Logging: human lines on stderr (they land in cloud-init-output.log), or JSON lines for shippers.
//!
//! The SDK's own crates stay at `warn` unless asked for with `-vv`: their debug output describes requests,
//! and embark's logs must never carry IMDS tokens or credentials.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `verbosity`: -1 quiet, 0 default, 1 `-v`, 2+ `-vv`.
pub fn init_logging(format: LogFormat, verbosity: i8) {
    let own = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let sdk = if verbosity >= 2 { "info" } else { "warn" };
    let filter = EnvFilter::new(format!("{sdk},embark={own}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .without_time()
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second initialisation (tests calling into the library) keeps the first subscriber.
    drop(result);
}
