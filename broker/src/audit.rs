//! Logging: one JSON object per line on stderr (or text for humans), and
//! the audit `decision` record with its stable schema.
//!
//! Events are `tracing` events. Audit decisions have target `spacer::audit`
//! and message `decision`; their fields are built as one typed [`Decision`]
//! record (so the schema is one struct, nested values such as `namespaces`
//! stay JSON objects) and flattened into the line by [`JsonLines`]. Service
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
        } else {
            self.map.insert(field.name().into(), text.into());
        }
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

/// The audit record of one request: exactly one per request, whatever its
/// outcome. Field names are a stable schema (see the README).
#[derive(Debug, Serialize)]
pub struct Decision {
    /// Peer uid (`SO_PEERCRED` at connect).
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer supplementary groups (`SO_PEERGROUPS`).
    pub groups: Vec<u32>,
    /// Peer pid at connect.
    pub pid: i32,
    /// Whether the peer is held by a pidfd (`SO_PEERPIDFD`), so that `pid`
    /// cannot have been reused.
    pub pidfd: bool,
    /// `rooms`, `subspace`, or `unknown` for an undecodable request.
    pub request: &'static str,
    /// Requested namespace types, by name.
    pub spaces: Vec<&'static str>,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The deciding rule's index, or `defaults`; absent when the request
    /// never reached the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The deciding rule's `name`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// Why (deny and error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Type → inode of every namespace handed out (allow).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<&'static str, u64>,
    /// The room options asked for (applied, when allowed): `loopback_up`,
    /// `hostname`, `domainname`, `monotonic_offset` and `boottime_offset`
    /// (decimal seconds, as text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<&'static str, serde_json::Value>>,
    /// The subspace the request came through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subspace: Option<SubspaceRef>,
    /// A subspace's id map choice, when not the default (`current`,
    /// `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<&'static str>,
    /// The uid map a subspace's user namespace was given, lines joined by
    /// commas (`"0 1000 1,1 100000 65536"`), when not `0 <uid> 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_map: Option<String>,
    /// Its gid map, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid_map: Option<String>,
    /// For an allowed subspace: the new subspace's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_subspace: Option<u64>,
    /// Whether the response reached the client's socket.
    pub delivered: bool,
    /// From receiving the request to sending the response.
    pub duration_us: u64,
}

/// The audit form of a request's options; `None` when it has none.
pub fn options(o: &spacer_proto::RoomOptions) -> Option<BTreeMap<&'static str, serde_json::Value>> {
    let mut m = BTreeMap::new();
    if o.loopback_up {
        m.insert("loopback_up", true.into());
    }
    for (k, v) in [("hostname", &o.hostname), ("domainname", &o.domainname)] {
        if let Some(v) = v {
            m.insert(k, v.as_str().into());
        }
    }
    for (k, v) in [
        ("monotonic_offset", o.monotonic_offset),
        ("boottime_offset", o.boottime_offset),
    ] {
        if let Some(v) = v {
            m.insert(k, v.to_string().into());
        }
    }
    (!m.is_empty()).then_some(m)
}

/// A subspace, as named in the audit log.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SubspaceRef {
    /// Broker-wide id, counting from 1.
    pub id: u64,
    /// 1 for a subspace of the host, 2 inside that, ...
    pub depth: u32,
}

impl Decision {
    /// Writes the record (target `spacer::audit`, message `decision`).
    pub fn emit(&self) {
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        tracing::info!(target: "spacer::audit", audit = %Raw(&json), "decision");
    }
}

/// Displays pre-rendered JSON as it is.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
