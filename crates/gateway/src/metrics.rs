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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::runtime::RuntimeConfig;
use crate::HashMap;

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

/// The node's request metrics; one per node, kept across config builds (clones share
/// the series).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Handles of the series seen, by route.
    handles: Arc<RwLock<HashMap<String, RouteHandles>>>,
}

/// A route's series handles; requests by status, service and consumer (nested, so a
/// lookup borrows the request's strings).
#[derive(Debug)]
struct RouteHandles {
    latency: Histogram,
    upstream: Histogram,
    requests: HashMap<u16, ByService>,
}

/// Request counters of one status: by service, then consumer.
type ByService = HashMap<Box<str>, HashMap<Box<str>, Counter>>;

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(histogram),
            upstream_latency: Family::new_with_constructor(histogram),
            handles: Arc::default(),
        }
    }
}

impl Metrics {
    /// Records one request. The series' handles are kept per route, service, status
    /// and consumer after their first request, so a request costs a few map reads
    /// under a read lock and no allocation.
    pub fn record(
        &self,
        route: &str,
        service: Option<&str>,
        consumer: Option<&str>,
        code: u16,
        duration: Duration,
        upstream: Option<Duration>,
    ) {
        let known = {
            let handles = self.handles.read().unwrap_or_else(|e| e.into_inner());
            handles.get(route).map(|h| {
                h.latency.observe(duration.as_secs_f64());
                if let Some(upstream) = upstream {
                    h.upstream.observe(upstream.as_secs_f64());
                }
                match h
                    .requests
                    .get(&code)
                    .and_then(|by_service| by_service.get(service.unwrap_or_default()))
                    .and_then(|by_consumer| by_consumer.get(consumer.unwrap_or_default()))
                {
                    Some(counter) => {
                        counter.inc();
                        true
                    }
                    None => false,
                }
            })
        };
        match known {
            Some(true) => {}
            Some(false) => self.new_series(route, service, consumer, code),
            None => {
                self.new_route(route, duration, upstream);
                self.new_series(route, service, consumer, code);
            }
        }
    }

    fn new_route(&self, route: &str, duration: Duration, upstream: Option<Duration>) {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        let latency = self.latency.get_or_create(&labels).clone();
        let upstream_latency = self.upstream_latency.get_or_create(&labels).clone();
        latency.observe(duration.as_secs_f64());
        if let Some(upstream) = upstream {
            upstream_latency.observe(upstream.as_secs_f64());
        }
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_owned())
            .or_insert(RouteHandles {
                latency,
                upstream: upstream_latency,
                requests: HashMap::default(),
            });
    }

    fn new_series(&self, route: &str, service: Option<&str>, consumer: Option<&str>, code: u16) {
        let labels = RequestLabels {
            route: route.to_owned(),
            service: service.unwrap_or_default().to_owned(),
            consumer: consumer.unwrap_or_default().to_owned(),
            code,
        };
        let counter = self.requests.get_or_create(&labels).clone();
        counter.inc();
        if let Some(handles) = self
            .handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(route)
        {
            handles
                .requests
                .entry(code)
                .or_default()
                .entry(labels.service.into())
                .or_default()
                .entry(labels.consumer.into())
                .or_insert(counter);
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
