//! The errors of keyhaven: what went wrong and what to do about it.
//!
//! Messages never contain a secret value: they name fields, ids and statuses.

use std::fmt;

use crate::model::ConnectionStatus;

/// A boxed error from an implementation (a store driver, an HTTP client).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every error the keyhaven library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller gave a value that cannot be used. Nothing was changed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which input: `entity_id`, `connected_account_params.api_key`, ...
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The thing named does not exist.
    #[error("{kind} {id:?} not found; {hint}")]
    NotFound {
        /// `integration`, `connected account`, ...
        kind: &'static str,
        /// The id that was looked up.
        id: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// An app that is neither in the catalogue nor already has an integration, named
    /// with no auth config to make one from (most often a typo).
    #[error("{}", unknown_app(app, closest))]
    UnknownApp {
        /// The app asked for.
        app: String,
        /// The catalogue's closest slugs, best first.
        closest: Vec<String>,
    },
    /// No scheme of that name is registered.
    #[error(
        "auth scheme {name:?} is not registered (registered: {available}); pick one of those, enable the cargo feature that provides it, or register your own scheme on the builder"
    )]
    UnknownScheme {
        /// The name asked for.
        name: String,
        /// The names that are registered, comma-separated.
        available: String,
    },
    /// The account cannot be used in its current status.
    #[error("connected account {id} is {status}, not ACTIVE{}; {}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), status.hint())]
    NotActive {
        /// The account.
        id: String,
        /// Its status.
        status: ConnectionStatus,
        /// Why it is in that status, when known.
        reason: Option<String>,
    },
    /// The request conflicts with the current state; re-read and try again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An auth scheme failed.
    #[error(transparent)]
    Scheme(SchemeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Waited too long.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// A bug or an unusable environment (no randomness, a broken invariant).
    #[error("internal error: {0}; please report it")]
    Internal(String),
}

impl Error {
    /// An [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The broad class of the error, for mapping to exit codes or HTTP statuses at the edges.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput { .. } | Self::UnknownScheme { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } | Self::UnknownApp { .. } => ErrorKind::NotFound,
            Self::NotActive { .. } | Self::Conflict(_) => ErrorKind::Conflict,
            Self::Scheme(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::TimedOut(_) => ErrorKind::TimedOut,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }
}

fn unknown_app(app: &str, closest: &[String]) -> String {
    let guess = match closest {
        [] => String::new(),
        [one] => format!("did you mean {one}? "),
        many => format!("did you mean one of {}? ", many.join(", ")),
    };
    format!(
        "app {app:?} is not in the catalogue and has no integration; {guess}Use a catalogue slug (GET /api/v1/apps), or give an auth_config (base_url, the scheme's settings) to make an integration for your own app"
    )
}

impl From<SchemeError> for Error {
    fn from(e: SchemeError) -> Self {
        match e {
            SchemeError::InvalidInput { field, reason } => Self::InvalidInput { field, reason },
            other => Self::Scheme(other),
        }
    }
}

/// The broad class of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input from the caller; nothing changed.
    InvalidInput,
    /// Not found.
    NotFound,
    /// Not possible in the current state.
    Conflict,
    /// The provider refused (wrong credentials, revoked grant).
    Rejected,
    /// A dependency (provider, database) is unavailable; retry later.
    Unavailable,
    /// A wait ran out of time.
    TimedOut,
    /// A bug or a broken environment.
    Internal,
}

/// An error from an [`AuthScheme`](crate::AuthScheme).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemeError {
    /// A parameter or configuration field is missing, empty, unknown or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field, with where it came from: `connected_account_params.api_key`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The provider refused the credentials or the grant; the user must connect again.
    #[error("the provider refused: {message}")]
    Rejected {
        /// The provider's own words (never a secret).
        message: String,
    },
    /// The provider could not be reached or failed; the account is unchanged, retry later.
    #[error("the provider is unavailable: {message}; retry later")]
    Unavailable {
        /// What failed.
        message: String,
    },
    /// The scheme does not do this.
    #[error("auth scheme {scheme} does not support {operation}")]
    Unsupported {
        /// The scheme's name.
        scheme: String,
        /// What was asked: `complete`, `refresh`, ...
        operation: &'static str,
    },
    /// Anything else, from a third-party scheme.
    #[error("auth scheme failed: {0}")]
    Other(BoxError),
}

impl SchemeError {
    /// A [`SchemeError::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::Rejected { .. } => ErrorKind::Rejected,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Unsupported { .. } => ErrorKind::Conflict,
            Self::Other(_) => ErrorKind::Internal,
        }
    }
}

/// An error from a [`Store`](crate::Store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row changed since it was read, or a unique key is taken; re-read and retry.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// The row to change does not exist.
    #[error("{kind} {id} does not exist in the store")]
    Missing {
        /// What kind of row.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The database cannot be reached; nothing was written. Retry when it is back.
    #[error("the store is unavailable: {0}; nothing was written, retry when it is back")]
    Unavailable(String),
    /// Stored data cannot be read (bad encoding, wrong key).
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    /// Anything else, from a store implementation.
    #[error("store failed: {0}")]
    Backend(BoxError),
}

impl StoreError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Missing { .. } => ErrorKind::NotFound,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Corrupt(_) | Self::Backend(_) => ErrorKind::Internal,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid_input",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed_out",
            Self::Internal => "internal",
        })
    }
}
