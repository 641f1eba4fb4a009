//! The cross-cluster controller (`portico xcluster`, requirements X1–X5): unites a
//! Service's endpoints across Kubernetes clusters so a production cluster's own load
//! balancing spreads its traffic over the peak (public cloud) clusters too.
//!
//! Built so far: [`queue`], the deduplicating work queue and bounded worker pool of
//! the cluster controllers, and [`union`], the rules that decide which EndpointSlices each
//! production cluster must hold, with the failure semantics (unknown peers left
//! alone, lost peers kept for a grace period then marked not ready), and [`slices`],
//! between Kubernetes Services and EndpointSlices and the union's types. The cluster
//! controllers that feed it from kube-rs watchers, the writers, leader election and
//! metrics follow (issue 13).

pub mod aggregator;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod lease;
pub mod queue;
pub mod slices;
pub mod union;
