//! `consumer-restriction` (APISIX's plugin): after authentication, only consumers (or
//! consumer groups) on the allow list pass, and none on the deny list. A request
//! without a consumer gets 401, as in APISIX.

use std::sync::Arc;

use model::plugin::RestrictBy;

use crate::core::phase::{PhaseCtx, Plugin, RequestView};
use crate::core::refusal::Refusal;

#[derive(Debug)]
pub struct ConsumerRestriction {
    by: RestrictBy,
    allow: Vec<String>,
    deny: Vec<String>,
    status: u16,
    message: Arc<str>,
}

impl ConsumerRestriction {
    pub fn compile(config: &model::plugin::ConsumerRestriction) -> Result<Self, String> {
        Ok(Self {
            by: config.by,
            allow: config.allowlist.clone(),
            deny: config.denylist.clone(),
            status: config.rejected_code,
            message: config
                .rejected_msg
                .as_deref()
                .unwrap_or(model::plugin::ConsumerRestriction::DEFAULT_MESSAGE)
                .into(),
        })
    }

    fn admits(&self, name: Option<&str>) -> bool {
        let listed = |list: &[String]| name.is_some_and(|n| list.iter().any(|x| x == n));
        !listed(&self.deny) && (self.allow.is_empty() || listed(&self.allow))
    }
}

impl Plugin for ConsumerRestriction {
    fn name(&self) -> &'static str {
        model::plugin::CONSUMER_RESTRICTION.name
    }

    fn access(&self, _: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let Some(consumer) = &ctx.consumer else {
            return Err(Refusal::denied(
                401,
                "unauthorized",
                "Missing authentication or identity verification",
            ));
        };
        let name = match self.by {
            RestrictBy::ConsumerName => Some(&*consumer.id),
            RestrictBy::ConsumerGroupId => consumer.group.as_deref(),
        };
        if self.admits(name) {
            Ok(())
        } else {
            Err(Refusal::Denied(Arc::new(crate::core::refusal::Denial {
                status: self.status,
                message: self.message.clone(),
                code: "forbidden",
                headers: Vec::new(),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_decide_and_deny_wins() {
        let plugin = |json: &str| {
            ConsumerRestriction::compile(&serde_json::from_str(json).unwrap()).unwrap()
        };
        let allow = plugin(r#"{"allowlist":["a","b"],"denylist":["b"]}"#);
        assert!(allow.admits(Some("a")));
        assert!(!allow.admits(Some("b")));
        assert!(!allow.admits(Some("c")));
        assert!(!allow.admits(None));
        let deny = plugin(r#"{"denylist":["x"]}"#);
        assert!(deny.admits(Some("a")) && deny.admits(None) && !deny.admits(Some("x")));
    }
}
