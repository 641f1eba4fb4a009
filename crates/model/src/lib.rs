//! Declarative configuration types shared by every Portico process.
//!
//! These are the only types that cross a process boundary (admin ↔ agent ↔ store ↔
//! gateway). They carry serde derives and a `validate()` that collects every problem at
//! once with a field path, so a caller can report all of them in one answer. Runtime
//! structures built from them (route tables, upstream pools) live in the crates that use
//! them and never go over the wire.

pub mod certificate;
pub mod cluster;
pub mod consumer;
pub mod diff;
pub mod json;
pub mod namespace;
pub mod plugin;
pub mod registry;
pub mod resource;
pub mod route;
pub mod service;
pub mod snapshot;
pub mod tester;
pub mod upstream;
pub mod user;
pub mod validate;
