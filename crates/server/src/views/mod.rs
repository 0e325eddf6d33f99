//! What the API reads and writes, one type per shape: each view is serialized as the
//! answer (or deserialized as the request) and is, through `utoipa::ToSchema`, its
//! only description in the OpenAPI document. One module per API version; the shapes
//! of ids and query values that all versions share live in [`shapes`].
//!
//! Handlers call the library (one set of domain calls) and build a view of what it
//! returned; a new API version is a new module of views and a new set of thin
//! handlers, not a second copy of the logic.

pub(crate) mod shapes;
pub(crate) mod v1;
pub(crate) mod v2;
pub(crate) mod v3;
