//! Stores for keyhaven, behind the [`Store`](keyhaven_core::Store) trait of
//! `keyhaven-core`: [`MemoryStore`] for tests and for programs that keep
//! nothing, and (with the `conformance` feature) the suite every store must pass.

mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use memory::MemoryStore;
