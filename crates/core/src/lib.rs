//! The core of keyhaven: the domain types, the [`AuthScheme`] and [`Store`]
//! extension traits, and the errors.
//!
//! This crate depends on no other keyhaven crate. A third-party auth scheme or
//! store depends on it alone, never on the `keyhaven` facade.

mod clock;
mod error;
mod event;
mod ids;
mod model;
mod outbox;
mod scheme;
mod secret;
mod spec;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Error, ErrorKind, SchemeError, StoreError};
pub use event::{AccountEvent, EventKind};
pub use ids::{
    APP_SLUG_MAX_LEN, AppSlug, ConnectedAccountId, ENTITY_ID_MAX_LEN, EntityId, IntegrationId,
    LABEL_MAX_LEN, LABELS_MAX_COUNT, Label, random_bytes, random_hex, to_hex,
};
pub use model::{
    AccountFilter, ConnectedAccount, ConnectionRequest, ConnectionRequestOutput, ConnectionStatus,
    CredentialsUpdate, Integration, Page, PendingState,
};
pub use outbox::{Delivery, DeliveryFilter, DeliveryOutcome, DeliveryState, WebhookTarget};
pub use scheme::{
    AccountContext, AuthScheme, CompleteContext, InitiateContext, Initiated, OutgoingRequest,
    SCHEME_CALL_TIMEOUT, connect_failure, scheme_client,
};
pub use secret::{Credentials, SecretFields};
pub use spec::{FieldKind, FieldSpec, SchemeSpec, ValidatedFields, validate_fields};
pub use store::{AccountLock, AuditLine, ChangeSink, Store, StoreChange};

/// The attribute that implementations of [`AuthScheme`] and [`Store`] use, in the
/// version the traits were declared with. The crates whose types appear in this
/// crate's API (chrono, http, url, serde_json, secrecy) are dependencies of the crates
/// that use them, at the versions of the workspace (the `keyhaven` facade re-exports
/// them for library users).
pub use async_trait::async_trait;
