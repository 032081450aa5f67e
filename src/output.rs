//! How embark speaks: log lines on stderr, results on stdout, errors as sentences.
//!
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

/// The format chosen at start-up, for output that is not a log event of embark's own (hook output).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// `verbosity`: -1 quiet, 0 default, 1 `-v`, 2+ `-vv`.
pub fn init_logging(format: LogFormat, verbosity: i8) {
    let _ = FORMAT.set(format);
    let own = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // aws_config's warnings about a credential provider repeat, in Debug form, the reason that
    // embark's own error sentence gives once.
    let sdk = if verbosity >= 2 {
        "info"
    } else {
        "warn,aws_config=error"
    };
    let filter = EnvFilter::new(format!("{sdk},embark={own}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match format {
        // On a terminal the reader knows when; in cloud-init-output.log (no times of its own) a line
        // needs its timestamp.
        LogFormat::Human if terminal => builder.with_ansi(true).without_time().try_init(),
        LogFormat::Human => builder.with_ansi(false).try_init(),
        LogFormat::Json => {
            use tracing_subscriber::layer::SubscriberExt;
            let subscriber = tracing_subscriber::registry()
                .with(EnvFilter::new(format!("{sdk},embark={own}")))
                .with(JsonLines);
            tracing::subscriber::set_global_default(subscriber).map_err(|e| e.into())
        }
    };
    // A second initialisation (tests calling into the library) keeps the first subscriber.
    drop(result);
}

/// JSON lines for log shippers: one object per event, flat — the event's fields and the fields of every
/// span it happens in (a step's `step` and `instance_id`) at the same level as `message`, so that a
/// query on `step` finds every line of that step.
struct JsonLines;

/// The fields a span was created with, kept for the events inside it.
struct SpanFields(serde_json::Map<String, serde_json::Value>);

/// Collects fields into a JSON map.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut map = serde_json::Map::new();
        attrs.record(&mut Fields(&mut map));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(map));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        use std::io::Write;
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), event.metadata().level().as_str().into());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    line.extend(fields.0.clone());
                }
            }
        }
        event.record(&mut Fields(&mut line));
        if let Ok(mut text) = serde_json::to_string(&line) {
            text.push('\n');
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// One line a hook wrote: as it is for people (the hook speaks for itself in the boot log), or a JSON
/// line naming the hook and the stream, so that every line on stderr parses.
pub fn hook_line(hook: &str, stream: &'static str, line: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!(hook, stream, "{line}"),
        _ => eprintln!("{line}"),
    }
}

/// The sentence a failed command ends with: `embark: error: …` for people, one more JSON line (with
/// the exit code) for log shippers, so that every line on stderr parses.
pub fn final_error(format: LogFormat, sentence: &str, exit_code: u8) {
    match format {
        LogFormat::Human => eprintln!("embark: error: {sentence}"),
        LogFormat::Json => tracing::error!(exit_code, final_error = true, "{sentence}"),
    }
}

/// `1 file`, `2 files`, `1 address`, `3 addresses`: a count and its noun, for people.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The error and its sources, as one line (never Debug).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Writes `text` to stdout. A reader that went away (`embark status | head -1`) ends the program
/// quietly with success, as ripgrep does: the output was not wanted any more.
pub fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => tracing::warn!("cannot write to stdout: {err}"),
    }
}

/// `text` and a newline on stdout (see [`say`]).
pub fn say_line(text: &str) {
    say(&format!("{text}\n"));
}

/// The stable JSON form behind `--json`, the human one otherwise.
pub fn print_either<T: serde::Serialize>(value: &T, json: bool, human: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(text) => say_line(&text),
            // Only a map with non-string keys can fail to encode; none of embark's outputs has one.
            Err(err) => tracing::error!("cannot encode the JSON output: {err}"),
        }
    } else {
        say(&human(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading the manifest failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(1u32, "address", "addresses"), "1 address");
        assert_eq!(count(0u32, "file", "files"), "0 files");
        assert_eq!(count(2u64, "hook", "hooks"), "2 hooks");
    }

    #[test]
    fn chains_read_outside_in_without_repeats() {
        let err = Outer(std::io::Error::other("connection reset"));
        assert_eq!(
            error_chain(&err),
            "reading the manifest failed: connection reset"
        );
    }
}
