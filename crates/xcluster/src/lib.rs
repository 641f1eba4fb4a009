//! The cross-cluster controller (`portico xcluster`, requirements X1–X5): unites a
//! Service's endpoints across Kubernetes clusters so a production cluster's own load
//! balancing spreads its traffic over the peak (public cloud) clusters too.
//!
//! - [`config`]: the cluster list (re-read on a timer) and the timings;
//! - [`registry`]: where the list comes from: a file and/or the admin's cluster
//!   registry (a cluster's Kubernetes face);
//! - [`controller`]: runs one [`cluster`] controller per cluster and the
//!   [`aggregator`], starting and stopping them as the list changes;
//! - [`cluster`]: a cluster's kube-rs client, watches, [`queue`] and worker pool,
//!   probe and slice writer;
//! - [`aggregator`]: plans the [`union`] (with its failure semantics) and hands each
//!   production cluster its writes; [`slices`] converts between Kubernetes objects and
//!   the union's types;
//! - [`lease`]: leader election, so only one replica writes;
//! - [`status`]: `/healthz`, `/status` and `/metrics` on the status port.

pub mod aggregator;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod discovery;
pub mod lease;
pub mod queue;
pub mod registry;
pub mod slices;
pub mod status;
pub mod union;
