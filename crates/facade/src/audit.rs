//! The audit trail: one JSON line per use of a credential (a credentials read, a
//! token printed, a request sent with an account's credentials), written to a file
//! (created 0600) by a background writer, and readable back by account and time.
//! Never a secret: no credential, no query string, no header value.
//!
//! # Writing
//! Lines are queued for one writer thread, which writes whatever is queued in one
//! `write` and flushes it to the operating system, so that many concurrent uses cost
//! one system call, not one each. Two ways to record:
//! - [`AuditLog::record`] waits until its line has been written (the writer wakes at
//!   once for it): a credentials read is granted only then (fail closed: a full disk
//!   refuses the read).
//! - [`AuditLog::record_queued`] does not wait (a request already sent cannot be
//!   unsent), and its line is written within a couple of milliseconds, with others;
//!   it refuses when the last write failed, so that requests are refused up front
//!   while the log cannot be written.
//!
//! # What a stop can lose
//! A clean stop ([`AuditLog::close`], or the last handle dropped) writes every queued
//! line first. A process killed (SIGKILL, a crash) loses the lines queued by
//! `record_queued` in its last couple of milliseconds (the requests whose lines were
//! waiting for company); lines of `record` were written before the read was granted.
//! Written lines are in the operating system's hands: a machine that loses power may
//! lose the last second of them (they are not `fsync`ed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The most lines [`AuditLog::query`] returns.
pub const AUDIT_QUERY_MAX: usize = 10_000;

/// What was done with a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditAction {
    /// The credentials were read (the credentials route, the library's caller).
    #[serde(rename = "credentials.read")]
    CredentialsRead,
    /// The CLI printed the credentials or a token.
    #[serde(rename = "token.printed")]
    TokenPrinted,
    /// A request was sent to the account's API with its credentials.
    #[serde(rename = "request")]
    Request,
}

/// Who used a credential: the key they gave, their address and user agent, as far
/// as known. Never the key itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditCaller {
    /// Which key the caller gave (`admin`, `credentials`), or `library`/`cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The caller's address.
    #[serde(default)]
    pub remote: Option<String>,
    /// The caller's user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One use of a credential, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// When.
    #[serde(serialize_with = "serialize_at")]
    pub at: DateTime<Utc>,
    /// What.
    pub action: AuditAction,
    /// The account (as given, when it was not found).
    pub connected_account_id: String,
    /// Its entity, when the account was found.
    pub entity_id: Option<String>,
    /// Its app, when the account was found.
    pub app_name: Option<String>,
    /// `granted`, `sent`, or why not (`not_found`, `not_active`, `unauthorized` ...);
    /// for a request also `refused` (a 401 before a refresh), `unreachable`, or
    /// `abandoned` (its caller gave up before the answer: it may have been sent).
    pub outcome: String,
    /// Who.
    #[serde(flatten)]
    pub caller: AuditCaller,
    /// A request's method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A request's host (and port, when not the scheme's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A request's path, without its query (which may carry secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The status the API answered a request with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// `at` written as chrono writes a `DateTime<Utc>` (RFC 3339 with `Z`, the fraction
/// of a second in 0, 3, 6 or 9 digits, as few as it needs), without the formatting
/// machinery: chrono's `Display` was about 2,500 instructions of every audit line,
/// as much as the rest of the line (callgrind, BENCHMARKS.md). Years outside
/// 0–9999 and leap seconds are left to chrono.
fn serialize_at<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match rfc3339_str(at, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => at.serialize(s),
    }
}

/// [`rfc3339`] as text in `buf`, or `None` when chrono must write it.
fn rfc3339_str<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    let len = rfc3339(at, buf)?;
    std::str::from_utf8(&buf[..len]).ok()
}

/// Writes `at` into `buf` as [`serialize_at`] says; its length, or `None` when
/// chrono must write it.
fn rfc3339(at: &DateTime<Utc>, buf: &mut [u8; 30]) -> Option<usize> {
    use chrono::{Datelike, Timelike};
    fn put(buf: &mut [u8], at: usize, mut value: u32, width: usize) {
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    put(buf, 0, year, 4);
    buf[4] = b'-';
    put(buf, 5, at.month(), 2);
    buf[7] = b'-';
    put(buf, 8, at.day(), 2);
    buf[10] = b'T';
    put(buf, 11, at.hour(), 2);
    buf[13] = b':';
    put(buf, 14, at.minute(), 2);
    buf[16] = b':';
    put(buf, 17, at.second(), 2);
    let mut len = 19;
    let (fraction, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        buf[len] = b'.';
        put(buf, len + 1, fraction, digits);
        len += 1 + digits;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

impl AuditAction {
    /// Its name, as written in the audit log (its serde name).
    fn name(self) -> &'static str {
        match self {
            Self::CredentialsRead => "credentials.read",
            Self::TokenPrinted => "token.printed",
            Self::Request => "request",
        }
    }
}

/// Appends `text` to `out` as a JSON string, as `serde_json` writes it. Most of an
/// audit line's strings (ids, slugs, methods, hosts, paths) have nothing to escape:
/// those are checked in one pass that the compiler can vectorise and copied whole,
/// where `serde_json` looks up every byte in its escape table (about 40% of a
/// line's cost, callgrind, BENCHMARKS.md); the others go through `serde_json`.
fn json_str(out: &mut String, text: &str) -> Result<(), serde_json::Error> {
    let escaped = text.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escaped {
        out.push_str(&serde_json::to_string(text)?);
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
    Ok(())
}

/// [`json_str`] of `text`, or `null`.
fn json_opt(out: &mut String, text: Option<&str>) -> Result<(), serde_json::Error> {
    match text {
        Some(text) => json_str(out, text),
        None => {
            out.push_str("null");
            Ok(())
        }
    }
}

impl AuditEntry {
    /// The entry as one line of the audit log (with its `\n`): exactly what
    /// `serde_json` makes of it (the log is read back with serde, and a test holds
    /// the two equal), written field by field rather than through serde's map of a
    /// flattened struct and its per-byte escaping, which took 6,800 instructions of
    /// every audited request (BENCHMARKS.md).
    fn json_line(&self) -> Result<String, serde_json::Error> {
        use std::fmt::Write as _;
        // Every field named, so that a field added to either struct cannot be left
        // out of the line unnoticed: this stops compiling until it is written here.
        let Self {
            at,
            action,
            connected_account_id,
            entity_id,
            app_name,
            outcome,
            caller:
                AuditCaller {
                    key,
                    remote,
                    user_agent,
                },
            method,
            host,
            path,
            status,
        } = self;
        let mut out = String::with_capacity(320);
        out.push_str("{\"at\":");
        let mut buf = [0u8; 30];
        match rfc3339_str(at, &mut buf) {
            Some(text) => json_str(&mut out, text)?,
            None => out.push_str(&serde_json::to_string(at)?),
        }
        out.push_str(",\"action\":");
        json_str(&mut out, action.name())?;
        out.push_str(",\"connectedAccountId\":");
        json_str(&mut out, connected_account_id)?;
        out.push_str(",\"entityId\":");
        json_opt(&mut out, entity_id.as_deref())?;
        out.push_str(",\"appName\":");
        json_opt(&mut out, app_name.as_deref())?;
        out.push_str(",\"outcome\":");
        json_str(&mut out, outcome)?;
        if let Some(key) = key {
            out.push_str(",\"key\":");
            json_str(&mut out, key)?;
        }
        out.push_str(",\"remote\":");
        json_opt(&mut out, remote.as_deref())?;
        for (name, value) in [
            ("userAgent", user_agent),
            ("method", method),
            ("host", host),
            ("path", path),
        ] {
            if let Some(value) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                json_str(&mut out, value)?;
            }
        }
        if let Some(status) = status {
            let _ = write!(out, ",\"status\":{status}");
        }
        out.push_str("}\n");
        Ok(out)
    }

    /// An entry of `action` on `account` at `at`, outcome `outcome`, nothing else known.
    pub fn new(
        at: DateTime<Utc>,
        action: AuditAction,
        account: &str,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            at,
            action,
            connected_account_id: account.to_owned(),
            entity_id: None,
            app_name: None,
            outcome: outcome.into(),
            caller: AuditCaller::default(),
            method: None,
            host: None,
            path: None,
            status: None,
        }
    }

    /// With the account's entity and app.
    #[must_use]
    pub fn of(mut self, account: &crate::ConnectedAccount) -> Self {
        self.entity_id = Some(account.entity_id.to_string());
        self.app_name = Some(account.app.to_string());
        self
    }

    /// With who did it.
    #[must_use]
    pub fn by(mut self, caller: AuditCaller) -> Self {
        self.caller = caller;
        self
    }
}

/// What [`AuditLog::query`] selects: one account's entries, newest last.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only before this time.
    pub until: Option<DateTime<Utc>>,
    /// At most this many (the newest ones); [`AUDIT_QUERY_MAX`] when absent or larger.
    pub limit: Option<usize>,
}

/// The audit log could not do its job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A line could not be written: what it records must not happen.
    #[error(
        "cannot write the audit log {to}: {reason}; credentials are not used or given out until it can be written (free disk space, or fix its permissions)"
    )]
    Write {
        /// The file (or writer) that failed.
        to: String,
        /// Why.
        reason: String,
    },
    /// The log cannot be read back.
    #[error("cannot read the audit log {from}: {reason}")]
    Read {
        /// The file.
        from: String,
        /// Why.
        reason: String,
    },
    /// This log is not kept anywhere it can be read back from.
    #[error(
        "the audit log {0} cannot be read back: it is not a file (give the library an AuditLog::to_file, or the server --audit-log)"
    )]
    NotReadable(String),
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Write { .. } => Error::Scheme(crate::SchemeError::Unavailable {
                message: e.to_string(),
            }),
            AuditError::NotReadable(_) => Error::Conflict(e.to_string()),
            AuditError::Read { .. } => Error::Internal(e.to_string()),
        }
    }
}

/// Who waits for the lines queued so far to be written.
type Waiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// What the writer has to do, shared with those who record.
#[derive(Default)]
struct Queue {
    /// Lines not written yet, each ending in a newline.
    lines: String,
    /// Where in `lines` the lines of [`AuditLog::record`] are (start, end): their
    /// uses are refused when they cannot be written, so they are not tried again.
    waited: Vec<(usize, usize)>,
    /// Those who wait for them.
    waiters: Vec<Waiter>,
    /// No more lines: write what is queued and stop.
    closed: bool,
}

/// How long queued lines (whose recorders do not wait) may wait to be written with
/// others: the writer wakes at most this often for them, not once per line.
const LINGER: Duration = Duration::from_millis(2);

/// Queued lines that make the writer write at once.
const BATCH_BYTES: usize = 256 * 1024;

/// After a failed write, the first wait before the writer tries again on its own
/// (the lines it could not write, or a probe when there were none: requests are
/// refused meanwhile, so no new line would make it try); doubled after each
/// failure, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest wait between two tries of a failing destination.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A batch not written whole.
struct Unwritten {
    /// How many bytes of the batch, from its start, were written as whole lines.
    written: usize,
    reason: String,
}

impl Unwritten {
    fn none(reason: impl ToString) -> Self {
        Self {
            written: 0,
            reason: reason.to_string(),
        }
    }
}

/// Where the writer puts a batch of lines.
trait Destination: Send {
    /// Writes `batch` (whole lines), or says why not and how much was written. An
    /// empty batch is a probe: whether the destination takes writes again.
    fn put(&mut self, batch: &str) -> Result<(), Unwritten>;
}

/// A file, a pipe, a test's writer: the batch in one write, then a flush.
struct ToWriter {
    out: Box<dyn Write + Send>,
    /// A failed write left part of a line: the next write ends it first, so that
    /// the line after starts on a line of its own (the part is skipped on reading).
    torn: bool,
}

impl ToWriter {
    fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out, torn: false }
    }
}

impl Destination for ToWriter {
    fn put(&mut self, batch: &str) -> Result<(), Unwritten> {
        if self.torn || batch.is_empty() {
            self.out
                .write_all(b"\n")
                .and_then(|()| self.out.flush())
                .map_err(Unwritten::none)?;
            self.torn = false;
        }
        let bytes = batch.as_bytes();
        let mut done = 0;
        while done < bytes.len() {
            let error = match self.out.write(&bytes[done..]) {
                Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            // The lines written whole stay written; a part of one is ended by the
            // next write.
            let written = bytes[..done]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            self.torn = written != done;
            return Err(Unwritten {
                written,
                reason: error.to_string(),
            });
        }
        // A buffering writer that cannot flush: what it wrote is unknown, so the
        // batch is tried again whole (a line may then be written twice, none lost).
        self.out.flush().map_err(|e| {
            self.torn = true;
            Unwritten::none(e)
        })
    }
}

/// The store's audit table: the batch in one insert, run on the runtime the log was
/// made on.
struct ToStore {
    store: Arc<dyn crate::Store>,
    runtime: tokio::runtime::Handle,
}

impl Destination for ToStore {
    fn put(&mut self, batch: &str) -> Result<(), Unwritten> {
        if batch.is_empty() {
            return self
                .runtime
                .block_on(self.store.check_ready())
                .map_err(Unwritten::none);
        }
        let lines: Vec<crate::AuditLine> = batch
            .lines()
            .filter_map(|line| {
                let entry: AuditEntry = serde_json::from_str(line).ok()?;
                Some(crate::AuditLine {
                    at: entry.at,
                    account: entry.connected_account_id,
                    line: line.to_owned(),
                })
            })
            .collect();
        // One insert: all or nothing.
        self.runtime
            .block_on(self.store.append_audit(&lines))
            .map_err(Unwritten::none)
    }
}

/// Where lines go: a writer thread, and the queue it takes them from.
struct Sink {
    name: String,
    /// Where they are read back from.
    source: Source,
    queue: Arc<(Mutex<Queue>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set while the last write failed, cleared by the next that succeeds (the
    /// writer tries again on its own).
    failing: Arc<AtomicBool>,
}

/// Where uses of credentials are recorded. Cheap to clone (clones share the writer).
#[derive(Clone)]
pub struct AuditLog {
    sink: Option<Arc<Sink>>,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::log_only()
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("to", &self.sink.as_ref().map(|s| s.name.as_str()))
            .finish()
    }
}

impl AuditLog {
    /// Records to the tracing log only (target `keyhaven::audit`): nothing kept.
    pub fn log_only() -> Self {
        Self { sink: None }
    }

    /// Records to the log and appends to `path`. A new file is made with mode 0600
    /// (and its directory, when missing, 0700), whatever the umask.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn to_file(path: &Path) -> Result<Self, AuditError> {
        let failed = |reason: String| AuditError::Write {
            to: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::files::create_private_dir(dir)
                .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = crate::files::open_append_private(path).map_err(|e| failed(e.to_string()))?;
        Ok(Self::start(
            path.display().to_string(),
            Source::File(path.to_owned()),
            Box::new(ToWriter::new(Box::new(file))),
        ))
    }

    /// Records to the log and to `store`'s audit table, so that every instance
    /// sharing the store (PostgreSQL) keeps and reads one trail. Lines are inserted
    /// in batches, as they are written to a file.
    ///
    /// # Errors
    /// Not called within a Tokio runtime (the inserts run on it).
    pub fn to_store(store: Arc<dyn crate::Store>) -> Result<Self, AuditError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| AuditError::Write {
            to: "the store's audit table".to_owned(),
            reason: format!("no async runtime to write with: {e}"),
        })?;
        Ok(Self::start(
            "the store's audit table".to_owned(),
            Source::Store(store.clone()),
            Box::new(ToStore { store, runtime }),
        ))
    }

    /// Records to the log and to `writer`, named `name` in messages: a pipe, a
    /// socket, or a test's writer. Such a log cannot be queried.
    pub fn to_writer(name: &str, writer: impl Write + Send + 'static) -> Self {
        Self::start(
            name.to_owned(),
            Source::None,
            Box::new(ToWriter::new(Box::new(writer))),
        )
    }

    fn start(name: String, source: Source, writer: Box<dyn Destination>) -> Self {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (thread_queue, thread_failing, thread_name) =
            (queue.clone(), failing.clone(), name.clone());
        let thread = std::thread::Builder::new()
            .name("keyhaven-audit".to_owned())
            .spawn(move || write_loop(&thread_name, writer, &thread_queue, &thread_failing))
            .ok();
        if thread.is_none() {
            queue.0.lock().closed = true;
            failing.store(true, Ordering::Release);
        }
        Self {
            sink: Some(Arc::new(Sink {
                name,
                source,
                queue,
                thread: Mutex::new(thread),
                failing,
            })),
        }
    }

    /// The file records go to, if any.
    pub fn path(&self) -> Option<&Path> {
        match self.sink.as_ref().map(|s| &s.source) {
            Some(Source::File(path)) => Some(path),
            _ => None,
        }
    }

    /// Whether entries are kept (a file or a writer), not only logged.
    pub fn is_kept(&self) -> bool {
        self.sink.is_some()
    }

    /// Logs `entry` (at info when the log is all there is, else at debug).
    fn log(&self, entry: &AuditEntry) {
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "keyhaven::audit",
                    $level,
                    account = entry.connected_account_id,
                    action = ?entry.action,
                    entity = entry.entity_id,
                    app = entry.app_name,
                    outcome = entry.outcome,
                    remote = entry.caller.remote,
                    method = entry.method,
                    host = entry.host,
                    path = entry.path,
                    status = entry.status,
                    "credential used"
                )
            };
        }
        if self.sink.is_some() {
            event!(tracing::Level::DEBUG);
        } else {
            event!(tracing::Level::INFO);
        }
    }

    /// Queues `entry`'s line, and `waiter` to be told when it is written.
    fn send(
        &self,
        sink: &Sink,
        entry: &AuditEntry,
        waiter: Option<Waiter>,
    ) -> Result<(), AuditError> {
        let line = entry.json_line().map_err(|e| AuditError::Write {
            to: sink.name.clone(),
            reason: e.to_string(),
        })?;
        let (queue, wake) = &*sink.queue;
        let mut q = queue.lock();
        if q.closed {
            return Err(AuditError::Write {
                to: sink.name.clone(),
                reason: "the audit writer has stopped".to_owned(),
            });
        }
        // A writer with nothing queued sleeps until told: the first line of a batch
        // wakes it (it then lingers for company), a waiter or a full batch at once.
        let first = q.lines.is_empty();
        let start = q.lines.len();
        q.lines.push_str(&line);
        let now = first || waiter.is_some() || q.lines.len() >= BATCH_BYTES;
        if let Some(waiter) = waiter {
            let end = q.lines.len();
            q.waited.push((start, end));
            q.waiters.push(waiter);
        }
        drop(q);
        if now {
            wake.notify_one();
        }
        Ok(())
    }

    /// Records `entry` and waits until it is written.
    ///
    /// # Errors
    /// The line could not be written (a full disk, a closed pipe): what it records
    /// must not be granted. The failure is logged too.
    pub async fn record(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        self.log(entry);
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(sink, entry, Some(tx))?;
        let result = rx
            .await
            .unwrap_or_else(|_| Err("the audit writer has stopped".to_owned()));
        // The writer has logged the failure.
        result.map_err(|reason| AuditError::Write {
            to: sink.name.clone(),
            reason,
        })
    }

    /// Queues `entry` without waiting for it to be written (it is, within a few
    /// milliseconds, with others).
    ///
    /// # Errors
    /// The last write failed, or the writer has stopped: the use should be refused.
    pub fn record_queued(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        self.log(entry);
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        self.ready()?;
        self.send(sink, entry, None)
    }

    /// Whether a use may proceed: the last write did not fail.
    ///
    /// # Errors
    /// The last write failed (the writer tries again on its own, within seconds).
    pub fn ready(&self) -> Result<(), AuditError> {
        match &self.sink {
            Some(sink) if sink.failing.load(Ordering::Acquire) => Err(AuditError::Write {
                to: sink.name.clone(),
                reason: "the last line could not be written (the log says why)".to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until every line queued so far is written.
    ///
    /// # Errors
    /// A line could not be written.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let (queue, wake) = &*sink.queue;
            let mut q = queue.lock();
            if q.closed {
                drop(q);
                return self.ready();
            }
            q.waiters.push(tx);
            drop(q);
            wake.notify_one();
        }
        rx.await
            .unwrap_or_else(|_| Err("the audit writer has stopped".to_owned()))
            .map_err(|reason| AuditError::Write {
                to: sink.name.clone(),
                reason,
            })
    }

    /// Stops the writer after it has written every queued line, and waits for it.
    /// Later records fail. With [`AuditLog::to_store`], the last inserts run on the
    /// async runtime: call it from a multi-threaded runtime (or outside one), not from
    /// the only thread of a current-thread runtime.
    pub fn close(&self) {
        if let Some(sink) = &self.sink {
            sink.close();
        }
    }

    /// The entries of `account` that `query` selects, oldest first. Reads the file
    /// from its start: a log kept for long is best rotated (a rotated-away file is
    /// no longer searched).
    ///
    /// # Errors
    /// A log that is not a file, or a file that cannot be read.
    pub async fn query(
        &self,
        account: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| AuditError::NotReadable("(log only)".to_owned()))?;
        // Lines queued before the query are part of its answer.
        let _ = self.flush().await;
        let limit = query.limit.unwrap_or(AUDIT_QUERY_MAX).min(AUDIT_QUERY_MAX);
        let failed = |reason: String| AuditError::Read {
            from: sink.name.clone(),
            reason,
        };
        match &sink.source {
            Source::None => Err(AuditError::NotReadable(sink.name.clone())),
            Source::File(path) => {
                let (path, account, query) = (path.clone(), account.to_owned(), query.clone());
                tokio::task::spawn_blocking(move || read_entries(&path, &account, &query, limit))
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
            Source::Store(store) => {
                // The store orders and bounds lines by their time to the microsecond,
                // rounded down; entries' times have nanoseconds. It is asked for every
                // microsecond the bounds touch (`until` rounded up), and the entries
                // are held to the bounds here, as the file's reader holds them: else a
                // page that ends at an entry's time (`until` = the oldest time read)
                // skips the entries earlier in that same microsecond. Entries cut here
                // can leave a page short: it is asked again for more.
                let until = query.until.map(|u| {
                    u.checked_add_signed(chrono::TimeDelta::nanoseconds(999))
                        .unwrap_or(u)
                });
                let within = |e: &AuditEntry| {
                    query.since.is_none_or(|t| e.at >= t) && query.until.is_none_or(|t| e.at < t)
                };
                let mut asked = limit;
                loop {
                    let lines = store
                        .audit_lines(account, query.since, until, asked)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    let mut entries: Vec<AuditEntry> = lines
                        .iter()
                        .filter_map(|line| serde_json::from_str(line).ok())
                        .filter(within)
                        .collect();
                    if entries.len() >= limit || lines.len() < asked {
                        // Oldest first: the newest `limit` are the last ones.
                        entries.drain(..entries.len().saturating_sub(limit));
                        return Ok(entries);
                    }
                    asked = asked.saturating_mul(2);
                }
            }
        }
    }
}

/// Where a log is read back from.
enum Source {
    /// Nowhere (a pipe, a test's writer).
    None,
    /// The file it appends to.
    File(PathBuf),
    /// The store's audit table.
    Store(Arc<dyn crate::Store>),
}

impl Sink {
    /// Tells the writer to write what is queued and stop, and waits for it.
    fn close(&self) {
        let (queue, wake) = &*self.queue;
        queue.lock().closed = true;
        wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if matches!(self.source, Source::Store(_)) {
            // Its writes run on the async runtime, which may be the very thread
            // dropping this (a current-thread runtime): waiting here could wait
            // forever. The writer still writes what is queued and stops; call
            // `AuditLog::close` (from outside the runtime's only thread) to wait.
            let (queue, wake) = &*self.queue;
            queue.lock().closed = true;
            wake.notify_one();
        } else {
            self.close();
        }
    }
}

/// The entries of `account` in the file at `path` that `query` selects.
fn read_entries(
    path: &Path,
    account: &str,
    query: &AuditQuery,
    limit: usize,
) -> Result<Vec<AuditEntry>, AuditError> {
    use std::io::BufRead;
    let failed = |reason: String| AuditError::Read {
        from: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let needle = format!(
        "\"connectedAccountId\":{}",
        serde_json::Value::from(account)
    );
    let mut found = std::collections::VecDeque::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| failed(e.to_string()))?;
        // A cheap test first: most lines are other accounts'.
        if !line.contains(&needle) {
            continue;
        }
        // Lines of older versions or cut by a crash are skipped, not fatal.
        let Ok(entry) = serde_json::from_str::<AuditEntry>(&line) else {
            continue;
        };
        if entry.connected_account_id != account
            || query.since.is_some_and(|t| entry.at < t)
            || query.until.is_some_and(|t| entry.at >= t)
        {
            continue;
        }
        if found.len() == limit {
            found.pop_front();
        }
        if limit > 0 {
            found.push_back(entry);
        }
    }
    Ok(found.into())
}

/// The writer thread: writes what is queued in batches (at once for those who wait,
/// within [`LINGER`] for the rest), answers who waits, stops once closed and empty.
///
/// A failed write sets `failing` (new uses are refused up front) and is tried again
/// on its own, after [`RETRY_FIRST`] and then longer waits: the queued lines it
/// could not write first (their requests were sent: they are kept, in order), or a
/// probe when none is left. Lines of [`AuditLog::record`] are not kept: their
/// recorders were told, and refused what the lines would have recorded.
fn write_loop(
    name: &str,
    mut writer: Box<dyn Destination>,
    shared: &(Mutex<Queue>, Condvar),
    failing: &AtomicBool,
) {
    let (queue, wake) = shared;
    let mut batch = String::new();
    // Queued lines a failed write left, written before the next ones.
    let mut pending = String::new();
    let mut waited = Vec::new();
    // After a failure: when to try again, and the wait after that.
    let mut retry: Option<(std::time::Instant, Duration)> = None;
    loop {
        let (waiters, closed) = {
            let mut q = queue.lock();
            loop {
                if q.closed || !q.waiters.is_empty() || q.lines.len() >= BATCH_BYTES {
                    break;
                }
                if let Some((at, _)) = retry {
                    if wake.wait_until(&mut q, at).timed_out() {
                        break;
                    }
                } else if q.lines.is_empty() {
                    wake.wait(&mut q);
                } else {
                    // Lines nobody waits for: a little longer, for company.
                    wake.wait_for(&mut q, LINGER);
                    break;
                }
            }
            batch.clear();
            batch.push_str(&pending);
            waited.clear();
            waited.extend(
                q.waited
                    .drain(..)
                    .map(|(start, end)| (start + pending.len(), end + pending.len())),
            );
            pending.clear();
            batch.push_str(&q.lines);
            q.lines.clear();
            (std::mem::take(&mut q.waiters), q.closed)
        };
        let result = if batch.is_empty() && retry.is_none() {
            Ok(())
        } else {
            writer.put(&batch)
        };
        let answer = match result {
            Ok(()) => {
                if retry.take().is_some() {
                    tracing::info!(to = %name, "the audit log is written again");
                }
                failing.store(false, Ordering::Release);
                Ok(())
            }
            Err(Unwritten { written, reason }) => {
                failing.store(true, Ordering::Release);
                pending = queued_lines(&batch, written.min(batch.len()), &waited);
                let wait = retry.map_or(RETRY_FIRST, |(_, wait)| (wait * 2).min(RETRY_MAX));
                retry = Some((std::time::Instant::now() + wait, wait));
                let kept = pending.lines().count();
                if closed {
                    tracing::error!(to = %name, %reason, lost = kept, "cannot write the audit log, and it is closing: these lines are lost");
                } else {
                    tracing::error!(to = %name, %reason, kept, retry_in_ms = wait.as_millis(), "cannot write the audit log; requests are refused until it is written again");
                }
                Err(reason)
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
        // Closed: what was queued has been tried (once more, whatever failed before).
        if closed && queue.lock().lines.is_empty() {
            return;
        }
    }
}

/// The lines of `batch` from byte `from` (a line's start) on, less those of
/// `waited` (sorted spans of whole lines).
fn queued_lines(batch: &str, from: usize, waited: &[(usize, usize)]) -> String {
    let mut out = String::new();
    let mut at = from;
    for &(start, end) in waited {
        if end <= at {
            continue;
        }
        out.push_str(batch.get(at..start.max(at)).unwrap_or_default());
        at = end;
    }
    out.push_str(batch.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(account: &str, secs: i64) -> AuditEntry {
        let at = DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap_or_default();
        AuditEntry::new(at, AuditAction::Request, account, "sent")
    }

    /// The audit line's time is written exactly as chrono writes it, and read back.
    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let mut times: Vec<DateTime<Utc>> = Vec::new();
        for secs in [0, 1, 59, 1_700_000_000, 253_402_300_799, -62_167_219_200] {
            for nanos in [
                0,
                1,
                5,
                999_999_999,
                1_000_000,
                120_000_000,
                123_000,
                123_456_000,
                123_456_789,
                500_000_001,
            ] {
                times.extend(DateTime::from_timestamp(secs, nanos));
            }
        }
        // Outside 0-9999 and a leap second: chrono's own writing.
        times.extend(DateTime::from_timestamp(253_402_300_800, 7));
        times.extend(DateTime::from_timestamp(-62_167_219_201, 0));
        times.extend(DateTime::from_timestamp(1_483_228_799, 1_500_000_000));
        let mut seconds = 1_234_567_u64;
        for _ in 0..2_000 {
            // A fixed sequence over years 1970-2100 and every fraction.
            seconds = seconds
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let secs = i64::try_from((seconds >> 20) % 4_102_444_800).unwrap_or(0);
            let nanos = u32::try_from((seconds >> 8) % 1_000_000_000).unwrap_or(0);
            times.extend(DateTime::from_timestamp(secs, nanos));
        }
        assert!(times.len() > 2_000);
        for at in times {
            let mut entry = entry("ca_0000000000000000000000000a", 0);
            entry.at = at;
            let line = serde_json::to_string(&entry).unwrap();
            let chrono = serde_json::to_string(&at).unwrap();
            assert!(
                line.starts_with(&format!("{{\"at\":{chrono},")),
                "{line} / {chrono}"
            );
            let back: AuditEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(back.at, at);
            assert_eq!(entry.json_line().unwrap(), format!("{line}\n"));
        }
    }

    /// The audit file's lines are what `serde_json` makes of the entries, byte for
    /// byte (the file is read back with serde), whatever the fields hold: every
    /// action, every optional field absent and present, and strings that need
    /// escaping (quotes, backslashes, control characters) or not (non-ASCII, DEL).
    #[test]
    fn lines_are_written_as_serde_json_writes_them() {
        let texts = [
            "",
            "ca_0000000000000000000000000a",
            "/v1/users/me/messages",
            "quote\"inside",
            "back\\slash",
            "new\nline\r\ttab",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}",
            "\u{7f} é 名前 🦀 \u{2028}",
            "</script><!--",
            "curl/8.5.0 (x86_64-pc-linux-gnu) \"quoted\\\"",
        ];
        let mut checked = 0;
        for (i, action) in [
            AuditAction::CredentialsRead,
            AuditAction::TokenPrinted,
            AuditAction::Request,
        ]
        .into_iter()
        .enumerate()
        {
            for (j, text) in texts.iter().enumerate() {
                for present in [false, true] {
                    let some = |k: usize| present.then(|| texts[(j + k) % texts.len()].to_owned());
                    let mut entry = entry(text, i64::try_from(i * 100 + j).unwrap());
                    entry.action = action;
                    entry.outcome = texts[(j + 1) % texts.len()].to_owned();
                    entry.entity_id = some(2);
                    entry.app_name = some(3);
                    entry.caller = AuditCaller {
                        key: some(4),
                        remote: some(5),
                        user_agent: some(6),
                    };
                    entry.method = some(7);
                    entry.host = some(8);
                    entry.path = some(9);
                    entry.status = present.then_some(u16::try_from(100 + j * 50).unwrap());
                    let serde = serde_json::to_string(&entry).unwrap();
                    let line = entry.json_line().unwrap();
                    assert_eq!(line, format!("{serde}\n"));
                    let back: AuditEntry = serde_json::from_str(&line).unwrap();
                    assert_eq!(back, entry);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * texts.len() * 2);
    }

    #[tokio::test]
    async fn entries_are_written_in_batches_and_read_back_by_account_and_time() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.log");
        let log = AuditLog::to_file(&path).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..100 {
            let account = if i % 2 == 0 { "ca_even" } else { "ca_odd" };
            log.record_queued(&entry(account, i))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        log.record(&entry("ca_even", 100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let all = log
            .query("ca_even", &AuditQuery::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all.len(), 51);
        assert!(all.windows(2).all(|w| w[0].at < w[1].at));
        let some = log
            .query(
                "ca_odd",
                &AuditQuery {
                    since: Some(entry("", 11).at),
                    until: Some(entry("", 21).at),
                    limit: Some(3),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let seconds: Vec<i64> = some
            .iter()
            .map(|e| e.at.timestamp() - 1_700_000_000)
            .collect();
        assert_eq!(seconds, [15, 17, 19], "the newest 3 of 11..21");
        // A clean stop writes what was queued.
        log.record_queued(&entry("ca_last", 0))
            .unwrap_or_else(|e| panic!("{e}"));
        log.close();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.contains("ca_last"));
        assert!(log.record(&entry("ca_late", 0)).await.is_err());
    }

    /// A queued line is written within moments with no flush, no waiter and no
    /// company: an idle writer is woken by the first line of a batch.
    #[tokio::test]
    async fn a_lone_queued_line_is_written_without_a_flush() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.log");
        let log = AuditLog::to_file(&path).unwrap_or_else(|e| panic!("{e}"));
        for round in 0..3 {
            let account = format!("ca_lone_{round}");
            log.record_queued(&entry(&account, round))
                .unwrap_or_else(|e| panic!("{e}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(&account) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the line of {account} was not written within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// A disk that takes `budget` more bytes (all when `None`), then fails each
    /// write, partly where a write crosses the budget; what it took in `taken`.
    #[derive(Clone, Default)]
    struct FlakyDisk {
        budget: Arc<Mutex<Option<usize>>>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for FlakyDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut budget = self.budget.lock();
            let n = match *budget {
                None => buf.len(),
                Some(0) => return Err(std::io::Error::other("No space left on device")),
                Some(left) => buf.len().min(left),
            };
            if let Some(left) = budget.as_mut() {
                *left -= n;
            }
            self.taken.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A disk that fills up and is freed later: requests are refused meanwhile, the
    /// lines of requests already sent are kept and written once it takes writes
    /// again (the writer tries on its own: no request comes to make it), lines cut
    /// by the full disk leave no torn line behind, and the lines of refused reads
    /// are not written later.
    #[tokio::test]
    async fn a_full_disk_refuses_uses_until_freed_and_loses_no_sent_request() {
        let disk = FlakyDisk::default();
        let log = AuditLog::to_writer("flaky", disk.clone());
        log.record(&entry("ca_before", 0))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Room for half a line: a queued line is cut, and the log fails.
        *disk.budget.lock() = Some(40);
        for i in 1..=3 {
            log.record_queued(&entry(&format!("ca_sent_{i}"), i))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        eventually("the failure seen", || log.ready().is_err()).await;
        assert!(log.record_queued(&entry("ca_refused", 4)).is_err());
        assert!(
            log.flush().await.is_err(),
            "a flush says the log is failing"
        );
        assert!(log.ready().is_err(), "and does not clear the failure");
        let read = log.record(&entry("ca_read_refused", 5)).await;
        assert!(read.is_err(), "a read that cannot be recorded is refused");
        // Freed: the writer writes the kept lines by itself, and uses go again.
        *disk.budget.lock() = None;
        eventually("the log written again", || log.ready().is_ok()).await;
        log.record_queued(&entry("ca_after", 6))
            .unwrap_or_else(|e| panic!("{e}"));
        log.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let taken = String::from_utf8(disk.taken.lock().clone()).unwrap_or_default();
        let accounts: Vec<String> = taken
            .lines()
            .filter_map(|line| serde_json::from_str::<AuditEntry>(line).ok())
            .map(|e| e.connected_account_id)
            .collect();
        assert_eq!(
            accounts,
            [
                "ca_before",
                "ca_sent_1",
                "ca_sent_2",
                "ca_sent_3",
                "ca_after"
            ],
            "{taken}"
        );
        // The cut line is on a line of its own, then the line whole.
        let unreadable = taken
            .lines()
            .filter(|l| !l.is_empty() && serde_json::from_str::<AuditEntry>(l).is_err())
            .count();
        assert_eq!(unreadable, 1, "{taken}");
    }

    struct FullDisk;
    impl Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("No space left on device"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failing_writer_refuses_waiting_and_then_queued_records() {
        let log = AuditLog::to_writer("full-disk", FullDisk);
        assert!(log.ready().is_ok());
        let err = log.record(&entry("ca_x", 0)).await.unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(log.ready().is_err());
        assert!(log.record_queued(&entry("ca_x", 1)).is_err());
        assert!(matches!(
            log.query("ca_x", &AuditQuery::default()).await,
            Err(AuditError::NotReadable(_))
        ));
    }
}
