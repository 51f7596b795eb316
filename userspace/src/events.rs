//! A run's events as JSON lines (`$MOAT_HOME/runs/<id>/events.jsonl`): start,
//! DNS queries, connections, injections (by grant name, never a token),
//! policy denials, exit.
//!
//! One line per event, appended under a lock so lines from concurrent tasks
//! never interleave. Lines are buffered (an event per proxied request must
//! not cost a syscall each) and flushed at least every 250 ms while events
//! come, at `start`, `container` and `exit`, and when the last handle is dropped, so
//! `tail -f` lags by at most a moment. Writing never fails a run: an event
//! that cannot be written is reported once on stderr and the run goes on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
#[cfg(test)]
use serde_json::json;

/// Where events go. Cloning is cheap; [`Events::none`] discards them.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Sink>>);

struct Sink {
    out: Mutex<(BufWriter<File>, Instant)>,
    failed: AtomicBool,
}

/// Longest time an event waits in the buffer while others keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(file)"
        } else {
            "Events(none)"
        })
    }
}

impl Events {
    /// Append to `path` (created 0600 if missing).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self(Some(Arc::new(Sink {
            out: Mutex::new((BufWriter::with_capacity(64 * 1024, file), Instant::now())),
            failed: AtomicBool::new(false),
        }))))
    }

    /// Events are dropped (tests, `moat proxy`).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Record `event` with `fields` (a JSON object; other values are ignored).
    pub fn emit(&self, event: &str, fields: Value) {
        self.write(event, value_fields(&fields));
    }

    /// Record `event` with `fields`, a struct serialized straight into the
    /// line: no `Value` built, for events written once per request (a third
    /// of the cost). Its fields must not be named `ts` or `event`.
    pub fn emit_fields<T: serde::Serialize>(&self, event: &str, fields: &T) {
        self.write(event, struct_fields(fields));
    }

    fn write(&self, event: &str, fields: impl FnOnce(&mut Vec<u8>)) {
        let Some(sink) = &self.0 else { return };
        let bytes = line(std::time::SystemTime::now(), event, fields);
        let mut out = sink.out.lock().unwrap_or_else(|p| p.into_inner());
        let (writer, flushed) = &mut *out;
        let mut result = writer.write_all(&bytes);
        if result.is_ok()
            && (matches!(event, "start" | "container" | "exit") || flushed.elapsed() >= FLUSH_EVERY)
        {
            result = writer.flush();
            *flushed = Instant::now();
        }
        if let Err(e) = result
            && !sink.failed.swap(true, Ordering::Relaxed)
        {
            eprintln!("moat: cannot write the run's events: {e}");
        }
    }
}

/// Writes a JSON object's members as `,"name":value` pairs, leaving out
/// `ts` and `event`.
fn value_fields(fields: &Value) -> impl FnOnce(&mut Vec<u8>) + '_ {
    move |bytes| {
        let Value::Object(fields) = fields else {
            return;
        };
        for (k, v) in fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ts" | "event"))
        {
            bytes.push(b',');
            let _ = serde_json::to_writer(&mut *bytes, k);
            bytes.push(b':');
            let _ = serde_json::to_writer(&mut *bytes, v);
        }
    }
}

/// Writes a struct's fields as `,"name":value` pairs: serialized as an
/// object, whose braces then go (`{"a":1}` → `,"a":1`; `{}` → nothing).
fn struct_fields<T: serde::Serialize>(fields: &T) -> impl FnOnce(&mut Vec<u8>) + '_ {
    move |bytes| {
        let start = bytes.len();
        let ok = serde_json::to_writer(&mut *bytes, fields).is_ok();
        if !ok || bytes.get(start) != Some(&b'{') || bytes.len() - start <= 2 {
            bytes.truncate(start);
            return;
        }
        bytes[start] = b',';
        bytes.pop();
    }
}

/// `{"ts":…,"event":…,<fields>}` and a newline: time and name first, for
/// people reading the file; `fields` appends `,"name":value` pairs.
fn line(now: std::time::SystemTime, event: &str, fields: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    use std::io::Write as _;
    let mut bytes = Vec::with_capacity(256);
    // Writing to a Vec cannot fail, nor can serialising JSON values or strings.
    let _ = write!(
        bytes,
        "{{\"ts\":\"{}\",\"event\":",
        humantime::format_rfc3339_millis(now)
    );
    let _ = serde_json::to_writer(&mut bytes, event);
    fields(&mut bytes);
    bytes.extend_from_slice(b"}\n");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_object_per_line_with_time_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let events = Events::create(&path).unwrap();
        events.emit("start", json!({"run": "ab12", "command": ["true"]}));
        events.clone().emit("exit", json!({"code": 0}));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "start");
        assert_eq!(lines[0]["run"], "ab12");
        assert_eq!(lines[1]["code"], 0);
        assert!(lines[1]["ts"].as_str().unwrap().ends_with('Z'));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_line_is_one_json_object_led_by_time_and_name() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let fields = json!({"host": "a\"b", "grants": ["x"], "ts": "forged", "event": "forged"});
        let text = String::from_utf8(line(t, "inject", value_fields(&fields))).unwrap();
        assert!(
            text.starts_with(r#"{"ts":"2023-11-14T22:13:20.123Z","event":"inject","#),
            "{text}"
        );
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["host"], "a\"b");
        assert_eq!(v["grants"][0], "x");
        assert_eq!(v["event"], "inject");
        assert_eq!(v.as_object().unwrap().len(), 4);
        let empty = String::from_utf8(line(t, "exit", value_fields(&json!({})))).unwrap();
        assert_eq!(
            empty,
            "{\"ts\":\"2023-11-14T22:13:20.123Z\",\"event\":\"exit\"}\n"
        );
    }

    #[test]
    fn a_struct_writes_the_same_line_as_its_value() {
        #[derive(serde::Serialize)]
        struct Inject<'a> {
            host: &'a str,
            port: u16,
            grants: &'a [&'a str],
        }
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let fields = Inject {
            host: "a\"b",
            port: 443,
            grants: &["x", "y"],
        };
        let direct = String::from_utf8(line(t, "inject", struct_fields(&fields))).unwrap();
        let value = line(
            t,
            "inject",
            value_fields(&serde_json::to_value(&fields).unwrap()),
        );
        assert!(direct.ends_with("}\n") && direct.matches('\n').count() == 1);
        assert_eq!(
            serde_json::from_str::<Value>(&direct).unwrap(),
            serde_json::from_slice::<Value>(&value).unwrap()
        );
        #[derive(serde::Serialize)]
        struct Nothing {}
        assert_eq!(
            line(t, "exit", struct_fields(&Nothing {})),
            line(t, "exit", value_fields(&json!({})))
        );
    }

    #[test]
    fn none_discards() {
        let events = Events::none();
        assert!(!events.is_enabled());
        events.emit("start", json!({}));
    }
}
