//! The audit trail of credential reads: one JSON line per read (who, which account,
//! what came of it) to a file opened for appending (mode 0600), and to the log
//! (target `keyhaven::audit`). Never a secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use std::sync::Mutex;

/// Where credential reads are recorded.
#[derive(Debug)]
pub struct Audit {
    file: Option<(PathBuf, Mutex<std::fs::File>)>,
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
        Self { file: None }
    }

    /// Records to the log and appends to `path` (created with mode 0600).
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn to_file(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        Ok(Self {
            file: Some((path.to_owned(), Mutex::new(file))),
        })
    }

    /// The file records go to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    /// Records one read.
    pub fn record(
        &self,
        at: keyhaven::chrono::DateTime<keyhaven::chrono::Utc>,
        r: AuditRecord<'_>,
    ) {
        tracing::info!(
            target: "keyhaven::audit",
            account = r.account,
            entity = r.entity,
            app = r.app,
            outcome = r.outcome,
            remote = r.remote,
            "credentials read"
        );
        let Some((path, file)) = &self.file else {
            return;
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
        let written = match file.lock() {
            Ok(mut f) => writeln!(f, "{line}").and_then(|()| f.flush()),
            Err(poisoned) => {
                let mut f = poisoned.into_inner();
                writeln!(f, "{line}").and_then(|()| f.flush())
            }
        };
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
        }
    }
}
