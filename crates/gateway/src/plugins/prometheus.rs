//! `prometheus`: counts and times the requests of the routes it covers in the node's
//! metrics (`metrics.rs`), in the log phase, so refused requests (401, 429 …) count
//! with their status too.

use std::sync::Arc;

use crate::core::phase::{LogRecord, PhaseCtx, Plugin};
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Prometheus {
    metrics: Metrics,
    consumer_label: bool,
}

impl Prometheus {
    pub fn compile(
        config: &model::plugin::Prometheus,
        counters: &Arc<crate::runtime::NodeCounters>,
    ) -> Result<Self, String> {
        Ok(Self {
            metrics: counters.metrics.clone(),
            consumer_label: config.consumer_label,
        })
    }
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        model::plugin::PROMETHEUS.name
    }

    fn log(&self, record: &LogRecord<'_>, ctx: &PhaseCtx) {
        let consumer = match (&ctx.consumer, self.consumer_label) {
            (Some(consumer), true) => Some(&*consumer.id),
            _ => None,
        };
        self.metrics.record(
            record.route_id,
            record.service_id,
            consumer,
            record.status,
            record.duration,
            record.upstream,
        );
    }
}
