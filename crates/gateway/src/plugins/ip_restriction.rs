//! `ip-restriction` (APISIX's name and message): refuses a client on the deny list, or
//! not on a non-empty allow list, with 403, in the access phase — after the route
//! matched, unlike the `remote_addrs` predicate. The client address is the canonical
//! one after the trusted-proxy rules.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::core::phase::{PhaseCtx, Plugin, RequestView};
use crate::core::refusal::Refusal;
use crate::router::cidrs;

#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    message: Arc<str>,
}

impl IpRestriction {
    pub fn compile(config: &model::plugin::IpRestriction) -> Result<Self, String> {
        Ok(Self {
            allow: cidrs("plugins.ip-restriction.allowlist", &config.allowlist)?,
            deny: cidrs("plugins.ip-restriction.denylist", &config.denylist)?,
            message: config
                .message
                .as_deref()
                .unwrap_or(model::plugin::IpRestriction::DEFAULT_MESSAGE)
                .into(),
        })
    }

    /// Whether the client may pass; an unknown address passes a deny list only.
    fn admits(&self, client: Option<IpAddr>) -> bool {
        match client {
            Some(ip) => {
                !self.deny.iter().any(|net| net.contains(&ip))
                    && (self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip)))
            }
            None => self.allow.is_empty(),
        }
    }
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        model::plugin::IP_RESTRICTION.name
    }

    fn access(&self, req: &RequestView<'_>, _ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        if self.admits(req.client_ip) {
            Ok(())
        } else {
            Err(Refusal::Forbidden(self.message.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_first_then_the_allow_list() {
        let filter = IpRestriction::compile(&model::plugin::IpRestriction {
            allowlist: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            denylist: vec!["10.9.0.0/16".into()],
            message: None,
        })
        .unwrap();
        for (client, admitted) in [
            (Some("10.1.2.3"), true),
            (Some("10.9.0.1"), false),
            (Some("192.0.2.1"), false),
            (Some("2001:db8::1"), true),
            (None, false),
        ] {
            let ip = client.map(|c| c.parse().unwrap());
            assert_eq!(filter.admits(ip), admitted, "{client:?}");
        }
        let deny_only = IpRestriction::compile(&model::plugin::IpRestriction {
            allowlist: vec![],
            denylist: vec!["::ffff:127.0.0.0/104".into()],
            message: Some("no".into()),
        })
        .unwrap();
        // A mapped block is its IPv4 block, and clients are canonical.
        assert!(!deny_only.admits(Some("127.0.0.1".parse().unwrap())));
        assert!(deny_only.admits(None));
    }
}
