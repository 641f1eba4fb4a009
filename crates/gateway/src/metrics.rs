//! The node's Prometheus metrics (`prometheus-client`), served as `/metrics` on the
//! status listener. Request counts and latencies come from the `prometheus` plugin's
//! log phase on the routes it covers; the rest is read from the current config when
//! scraped: config revision, upstream node health, skipped objects, Redis fallbacks.
//!
//! ```text
//! portico_http_requests_total{route,service,consumer,code}   counter
//! portico_http_request_duration_seconds{route}               histogram
//! portico_upstream_duration_seconds{route}                   histogram (to the response head)
//! portico_upstream_node_healthy{upstream,node}               gauge 1/0
//! portico_config_revision                                    gauge
//! portico_config_skipped_objects                             gauge
//! portico_redis_fallbacks_total                              counter
//! portico_log_lines_dropped_total                            counter
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::runtime::RuntimeConfig;

/// Request latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub service: String,
    pub consumer: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    upstream: String,
    node: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The node's request metrics; one per node, kept across config builds.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(histogram),
            upstream_latency: Family::new_with_constructor(histogram),
        }
    }
}

impl Metrics {
    /// Records one request.
    pub fn record(&self, labels: &RequestLabels, duration: Duration, upstream: Option<Duration>) {
        self.requests.get_or_create(labels).inc();
        let route = RouteLabels {
            route: labels.route.clone(),
        };
        self.latency
            .get_or_create(&route)
            .observe(duration.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream_latency
                .get_or_create(&route)
                .observe(upstream.as_secs_f64());
        }
    }

    /// The text exposition of every metric, with `config` read now.
    pub fn render(&self, config: &RuntimeConfig) -> String {
        let mut registry = Registry::with_prefix("portico");
        registry.register(
            "http_requests",
            "Requests of the routes the prometheus plugin covers",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from the request head to the end of the response",
            self.latency.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending to an upstream node to its response head",
            self.upstream_latency.clone(),
        );
        let health: Family<NodeLabels, Gauge> = Family::default();
        for pool in &config.pools {
            for node in pool.health_report() {
                health
                    .get_or_create(&NodeLabels {
                        upstream: pool.id.clone(),
                        node: node.address.clone(),
                    })
                    .set(i64::from(node.healthy));
            }
        }
        registry.register(
            "upstream_node_healthy",
            "1 when the node takes traffic, 0 when checks marked it down",
            health,
        );
        registry.register(
            "config_revision",
            "Admin revision of the config the node serves",
            ConstGauge::new(config.revision.0 as i64),
        );
        registry.register(
            "config_skipped_objects",
            "Config objects not served as written (see the heartbeat)",
            ConstGauge::new(config.problems.len() as i64),
        );
        registry.register(
            "redis_fallbacks",
            "Requests counted in memory because their Redis was down or slow",
            ConstCounter::new(config.counters.redis_fallbacks.load(Ordering::Relaxed)),
        );
        registry.register(
            "log_lines_dropped",
            "Access-log lines dropped because a sink's queue was full",
            ConstCounter::new(config.counters.log_dropped.load(Ordering::Relaxed)),
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
