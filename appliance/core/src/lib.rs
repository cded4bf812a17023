//! `lifeboat-core`: the controller's state, its domain modules and the one
//! operations layer in front of them.
//!
//! Only [`ops`] and the read-only records in [`model`] are public. The store
//! and the domain modules are private to this crate, so an adapter (REST,
//! console, CLI and every interface to come) can act only through an
//! [`ops::Ops`] function, which checks access and writes the audit record:
//! a bypass does not compile.

mod access;
mod alerts;
mod backup;
mod clock;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod ha;
mod hub;
mod inventory;
mod jobs;
mod logging;
mod metrics;
pub mod model;
pub mod ops;
mod pki;
mod secrets;
mod snmp;
mod sql_export;
mod store;
