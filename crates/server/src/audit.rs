//! The audit trail of credential reads: one JSON line per read (who, which account,
//! from where, what came of it) to a file opened for appending (created with mode
//! 0600), and to the log (target `keyhaven::audit`). Never a secret.
//!
//! A read whose line cannot be written is not granted: the credentials route answers
//! 503 instead of credentials that would leave no trace ([`Audit::record`] fails).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::json;

/// Where credential reads are recorded.
pub struct Audit {
    sink: Option<Sink>,
}

/// A destination of audit lines, and its name for messages.
struct Sink {
    name: String,
    path: Option<PathBuf>,
    writer: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("to", &self.sink.as_ref().map(|s| s.name.as_str()))
            .finish()
    }
}

/// An audit line could not be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write the audit log {to}: {source}; credentials are not given out until it can be written (free disk space, or fix its permissions)"
)]
pub struct AuditError {
    /// The file (or writer) that failed.
    pub to: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// One credential read.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    /// The account read.
    pub account: &'a str,
    /// Its entity and app, when it was found.
    pub entity: Option<&'a str>,
    /// Its app.
    pub app: Option<&'a str>,
    /// `granted`, or why not (`not_found`, `not_active` ...).
    pub outcome: &'a str,
    /// The caller's address, when known.
    pub remote: Option<&'a str>,
    /// The caller's user agent, when given.
    pub user_agent: Option<&'a str>,
}

impl Audit {
    /// Records to the log only.
    pub fn log_only() -> Self {
        Self { sink: None }
    }

    /// Records to the log and appends to `path`. A new file is made with mode 0600
    /// (and its directory, when missing, 0700), whatever the umask.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn to_file(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            keyhaven::files::create_private_dir(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = keyhaven::files::open_append_private(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        Ok(Self {
            sink: Some(Sink {
                name: path.display().to_string(),
                path: Some(path.to_owned()),
                writer: Mutex::new(Box::new(file)),
            }),
        })
    }

    /// Records to the log and to `writer` (each line written, then flushed), named
    /// `name` in messages: a pipe, a socket, or a test's writer.
    pub fn to_writer(name: &str, writer: impl Write + Send + 'static) -> Self {
        Self {
            sink: Some(Sink {
                name: name.to_owned(),
                path: None,
                writer: Mutex::new(Box::new(writer)),
            }),
        }
    }

    /// The file records go to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().and_then(|s| s.path.as_deref())
    }

    /// Records one read.
    ///
    /// # Errors
    /// The line could not be written (a full disk, a closed pipe): the read must not
    /// be granted. The failure is logged too.
    pub fn record(
        &self,
        at: keyhaven::chrono::DateTime<keyhaven::chrono::Utc>,
        r: AuditRecord<'_>,
    ) -> Result<(), AuditError> {
        tracing::info!(
            target: "keyhaven::audit",
            account = r.account,
            entity = r.entity,
            app = r.app,
            outcome = r.outcome,
            remote = r.remote,
            "credentials read"
        );
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let line = json!({
            "at": at.to_rfc3339(),
            "action": "credentials.read",
            "connectedAccountId": r.account,
            "entityId": r.entity,
            "appName": r.app,
            "outcome": r.outcome,
            "remote": r.remote,
            "userAgent": r.user_agent,
        });
        // One write of the whole line, so that lines of concurrent reads never mix.
        let mut text = line.to_string();
        text.push('\n');
        let mut writer = sink
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        writer
            .write_all(text.as_bytes())
            .and_then(|()| writer.flush())
            .map_err(|source| {
                tracing::error!(to = %sink.name, error = %source, outcome = r.outcome, "cannot write the audit log");
                AuditError {
                    to: sink.name.clone(),
                    source,
                }
            })
    }
}
