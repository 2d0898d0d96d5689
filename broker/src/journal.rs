//! Native journald output: each event one datagram of `KEY=value` fields
//! (the journal's native protocol), with the audit record's fields as
//! fields of their own — `journalctl -u spacer-broker DECISION=deny UID=1000`
//! finds decisions.

use std::fmt;
use std::io;
use std::os::linux::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` names the
/// device and inode of the stream systemd connected, and stderr is it.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.st_dev()) && ino.parse::<u64>().ok() == Some(meta.st_ino())
}

/// The layer: sends every event to the journal.
pub struct Journal {
    sock: UnixDatagram,
    ok: Arc<AtomicBool>,
}

impl Journal {
    /// Connects to the journal's socket (before the privilege drop; the
    /// connected socket keeps working after it).
    pub fn connect(path: &Path, ok: Arc<AtomicBool>) -> io::Result<Journal> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        // A journal that cannot keep up must not stall the event loop for
        // long: a full socket is waited on for at most SEND_WAIT per record
        // (see `send_waiting`); past that the sink is marked unhealthy and
        // grants fail closed.
        sock.set_nonblocking(true)?;
        Ok(Journal { sock, ok })
    }
}

impl<S: Subscriber> Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let priority = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut out = Fields {
            buf: Vec::with_capacity(512),
            message: None,
            summary: None,
        };
        out.put("PRIORITY", &priority.to_string());
        out.put("SYSLOG_IDENTIFIER", "spacer-broker");
        out.put("TARGET", meta.target());
        event.record(&mut out);
        // An audit record reads as one line in `journalctl` and `systemctl
        // status`; its fields carry the details.
        if let Some(m) = out.summary.take().or(out.message.take()) {
            out.put("MESSAGE", &m);
        }
        let r = send_waiting(&self.sock, &out.buf, SEND_WAIT);
        self.ok.store(r.is_ok(), Ordering::Relaxed);
    }
}

/// How long one record may wait for room in the journal's socket.
pub const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends one datagram on a non-blocking socket; while the socket is full
/// (journald is behind), waits for room, at most `budget` in all. Any
/// other error, or no room in time, is an error.
pub fn send_waiting(
    sock: &UnixDatagram,
    buf: &[u8],
    budget: std::time::Duration,
) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let end = std::time::Instant::now() + budget;
    loop {
        match sock.send(buf) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = end.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                let ms = PollTimeout::try_from(left.as_millis().max(1) as i32)
                    .unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, ms);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The datagram being built.
struct Fields {
    buf: Vec<u8>,
    /// The event's message, put last.
    message: Option<String>,
    /// An audit record's one-line summary, put as the message instead.
    summary: Option<String>,
}

/// One line that says who got what: `uid 1000 (pid 42) rooms net, uts:
/// allow by rule 2 ("tenant"): net:[4026532301] uts:[4026532302]`, or the
/// reason of a refusal.
fn summary(obj: &serde_json::Map<String, serde_json::Value>) -> String {
    let text = |k: &str| match obj.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let spaces = obj
        .get("spaces")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let rule = match (text("rule"), text("rule_name")) {
        (r, _) if r.is_empty() => "no rule".to_owned(),
        (r, _) if r == "defaults" => "defaults".to_owned(),
        (r, n) if n.is_empty() => format!("rule {r}"),
        (r, n) => format!("rule {r} ({n:?})"),
    };
    let mut line = format!(
        "uid {} (pid {}) {} {spaces}: {} by {rule}",
        text("uid"),
        text("pid"),
        text("request"),
        text("decision")
    );
    if let Some(sub) = obj.get("subspace").and_then(|v| v.as_object()) {
        let id = sub.get("id").map(|v| v.to_string()).unwrap_or_default();
        line.push_str(&format!(" in subspace {id}"));
    }
    if let Some(ns) = obj.get("namespaces").and_then(|v| v.as_object()) {
        if !ns.is_empty() {
            let list: Vec<String> = ns.iter().map(|(t, i)| format!("{t}:[{i}]")).collect();
            line.push_str(&format!(": {}", list.join(" ")));
        }
    }
    let reason = text("reason");
    if !reason.is_empty() {
        line.push_str(&format!(": {reason}"));
    }
    line
}

impl Fields {
    /// Appends one field; values with a newline use the protocol's binary
    /// form (name, newline, little-endian length, data, newline).
    fn put(&mut self, name: &str, value: &str) {
        let key = journal_key(name);
        if key.is_empty() {
            return;
        }
        self.buf.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            self.buf.push(b'\n');
            self.buf
                .extend_from_slice(&(value.len() as u64).to_le_bytes());
            self.buf.extend_from_slice(value.as_bytes());
        } else {
            self.buf.push(b'=');
            self.buf.extend_from_slice(value.as_bytes());
        }
        self.buf.push(b'\n');
    }

    /// An audit record's JSON object: each key a field of its own (nested
    /// values, such as `namespaces`, as JSON text).
    fn put_json(&mut self, text: &str) {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(obj)) => {
                self.summary = Some(summary(&obj));
                for (k, v) in obj {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    self.put(&k, &v);
                }
            }
            _ => self.put("AUDIT", text),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "audit" => self.put_json(&text),
            "message" => self.message = Some(text),
            name => self.put(name, &text),
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            name => self.put(name, value),
        }
    }
}

/// A journal field name: upper case, `A-Z0-9_`, not starting with `_`
/// (those are the journal's own trusted fields) or a digit.
fn journal_key(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    key.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit())
        .chars()
        .take(64)
        .collect()
}

#[cfg(test)]
mod send_tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A socket full to the brim, and its reader.
    fn full() -> (UnixDatagram, UnixDatagram) {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        tx.set_nonblocking(true).unwrap();
        while tx.send(&[0u8; 1024]).is_ok() {}
        (tx, rx)
    }

    #[test]
    fn a_slow_reader_is_waited_for() {
        let (tx, rx) = full();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut b = [0u8; 2048];
            rx.recv(&mut b).unwrap();
            rx
        });
        assert!(send_waiting(&tx, b"record", Duration::from_secs(5)).is_ok());
        drop(reader.join().unwrap());
    }

    #[test]
    fn a_stuck_reader_fails_within_the_budget() {
        let (tx, _rx) = full();
        let t = Instant::now();
        assert!(send_waiting(&tx, b"record", Duration::from_millis(100)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_journal_safe() {
        assert_eq!(journal_key("uid"), "UID");
        assert_eq!(journal_key("policy_sha256"), "POLICY_SHA256");
        assert_eq!(journal_key("_uid"), "UID");
        assert_eq!(journal_key("rule.name"), "RULE_NAME");
    }

    #[test]
    fn multi_line_values_use_the_binary_form() {
        let new = || Fields {
            buf: Vec::new(),
            message: None,
            summary: None,
        };
        let mut f = new();
        f.put("error", "a\nb");
        assert_eq!(f.buf, b"ERROR\n\x03\0\0\0\0\0\0\0a\nb\n");
        let mut f = new();
        f.put_json(r#"{"uid":7,"decision":"deny","namespaces":{"net":1}}"#);
        let text = String::from_utf8(f.buf).unwrap();
        assert!(text.contains("UID=7\n") && text.contains("DECISION=deny\n"));
        assert!(text.contains("NAMESPACES={\"net\":1}\n"));
    }

    #[test]
    fn an_audit_record_reads_as_one_line() {
        let obj = |t: &str| match serde_json::from_str(t).unwrap() {
            serde_json::Value::Object(o) => o,
            _ => unreachable!(),
        };
        assert_eq!(
            summary(&obj(
                r#"{"uid":65534,"pid":9,"request":"rooms","spaces":["net","uts"],"decision":"deny","rule":"defaults","reason":"net not allowed by defaults"}"#
            )),
            "uid 65534 (pid 9) rooms net, uts: deny by defaults: net not allowed by defaults"
        );
        assert_eq!(
            summary(&obj(
                r#"{"uid":4343,"pid":7,"request":"rooms","spaces":["net"],"decision":"allow","rule":"2","rule_name":"tenant","namespaces":{"net":40},"subspace":{"id":3,"depth":1}}"#
            )),
            "uid 4343 (pid 7) rooms net: allow by rule 2 (\"tenant\") in subspace 3: net:[40]"
        );
    }
}
