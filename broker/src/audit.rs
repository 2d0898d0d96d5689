//! Logging: one JSON object per line on stderr (or text for humans), and
//! the audit `decision` record with its stable schema.
//!
//! Events are `tracing` events. Audit decisions have target `spacer::audit`
//! and message `decision`; their fields are built as one typed record
//! ([`crate::record`]: the schema is one struct, nested values such as
//! `namespaces` stay JSON objects) and flattened into the line by
//! [`JsonLines`]. Service
//! events (start, stop, worker restarts, policy reloads) have target
//! `spacer::event` and an `event` field.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

pub use spacer_broker::cli::LogFormat;

/// Whether the last write to the log succeeded. Grants fail closed while it
/// did not: no namespace is handed out that the audit log cannot record.
#[derive(Debug, Clone)]
pub struct Health {
    ok: Arc<AtomicBool>,
}

impl Health {
    /// True while the log sink accepts writes.
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }
}

/// stderr, remembering whether writes succeed.
#[derive(Clone)]
struct HealthWriter {
    ok: Arc<AtomicBool>,
}

impl Write for HealthWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = io::stderr().write(buf);
        self.ok.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let r = io::stderr().write_all(buf);
        self.ok.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for HealthWriter {
    type Writer = HealthWriter;
    fn make_writer(&'a self) -> HealthWriter {
        self.clone()
    }
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat, journal_socket: &std::path::Path) -> Health {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let ok = Arc::new(AtomicBool::new(true));
    let format = match format {
        LogFormat::Auto if crate::journal::stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Json,
        f => f,
    };
    let journal_error = if format == LogFormat::Journal {
        match crate::journal::Journal::connect(journal_socket, ok.clone()) {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(tracing_subscriber::filter::LevelFilter::INFO)
                    .with(layer)
                    .init();
                return Health { ok };
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    let writer = HealthWriter { ok: ok.clone() };
    // A failed write is recorded by the writer (and grants then fail
    // closed); the library's own report of it would `eprintln!` into the
    // same broken stderr, which panics.
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::INFO)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        _ => builder.event_format(JsonLines).init(),
    }
    if let Some(e) = journal_error {
        tracing::warn!(target: "spacer::event", event = "journal_unavailable", error = %e, socket = %journal_socket.display(), "cannot reach the journal; logging JSON to stderr");
    }
    Health { ok }
}

/// The JSON line format: `timestamp`, `level`, `target`, `message`, then
/// the event's fields; a field named `audit` holding a JSON object is
/// merged into the line.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = meta.level().as_str().to_lowercase();
        let head = |w: &mut Writer<'_>| -> fmt::Result {
            write!(
                w,
                "{{\"timestamp\":{},\"level\":{},\"target\":{}",
                json_str(&ts),
                json_str(&level),
                json_str(meta.target())
            )
        };
        // An audit record is already one JSON object: splice it in as it is.
        if let Some(audit) = fields
            .audit
            .take()
            .filter(|a| a.starts_with('{') && a.ends_with('}'))
        {
            head(&mut writer)?;
            for (k, v) in &fields.map {
                write!(writer, ",{}:{}", json_str(k), v)?;
            }
            let inner = &audit[1..audit.len() - 1];
            if !inner.is_empty() {
                write!(writer, ",{inner}")?;
            }
            return writeln!(writer, "}}");
        }
        let mut map = std::mem::take(&mut fields.map);
        map.insert("timestamp".into(), ts.into());
        map.insert("level".into(), level.into());
        map.insert("target".into(), meta.target().into());
        let line = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Event fields whose values are rendered JSON ([`Json`]): a JSON line
/// carries them as JSON (a list of pids as an array of numbers), not as
/// text. The `tracing` macros pass anything but a string, a number or a
/// boolean as text, so the formatter knows these by name; only the
/// broker's own values go in them.
const JSON_FIELDS: &[&str] = &["workers", "spawner"];

/// A value rendered as JSON, for the event fields in [`JSON_FIELDS`]
/// (`workers = %Json(&pids)`).
pub struct Json<T>(pub T);

impl<T: Serialize> fmt::Display for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(&self.0).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[derive(Default)]
struct Fields {
    map: BTreeMap<String, serde_json::Value>,
    /// A pre-rendered audit record (`audit = %json`).
    audit: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "audit" {
            self.audit = Some(text);
            return;
        }
        let value = JSON_FIELDS
            .contains(&field.name())
            .then(|| serde_json::from_str(&text).ok())
            .flatten()
            .unwrap_or(serde_json::Value::String(text));
        self.map.insert(field.name().into(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.map.insert(field.name().into(), value.into());
    }
}

/// Writes a rendered audit record (target `spacer::audit`, message
/// `decision`); see [`crate::record`].
pub fn emit(json: &str) {
    tracing::info!(target: "spacer::audit", audit = %Raw(json), "decision");
}

/// Displays pre-rendered JSON as it is.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The JSON lines `f` logs, parsed (for tests).
#[cfg(test)]
pub fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    let buf = Buf::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .event_format(JsonLines)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_pids_are_json_arrays_and_other_text_stays_text() {
        let lines = capture(|| {
            tracing::info!(target: "spacer::event", event = "start", workers = %Json(vec![30094, 30095]), spawner = %Json(vec![30096]), line = %"[1]", "broker started");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["workers"], serde_json::json!([30094, 30095]));
        assert_eq!(lines[0]["spawner"], serde_json::json!([30096]));
        assert_eq!(lines[0]["line"], "[1]");
        assert_eq!(lines[0]["event"], "start");
    }
}
