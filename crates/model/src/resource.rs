//! The closed set of resource kinds an instance's config is made of.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::certificate::Certificate;
use crate::json::JsonError;
use crate::route::Route;
use crate::upstream::Upstream;
use crate::validate::ValidationErrors;

/// A kind of resource; its plural name is the URL segment and the store key segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Routes,
    Upstreams,
    Certificates,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 3] = [Self::Routes, Self::Upstreams, Self::Certificates];

    /// The plural segment used in URLs and store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routes => "routes",
            Self::Upstreams => "upstreams",
            Self::Certificates => "certificates",
        }
    }

    /// The singular noun, for messages ("route \"r1\" does not exist").
    pub fn singular(self) -> &'static str {
        match self {
            Self::Routes => "route",
            Self::Upstreams => "upstream",
            Self::Certificates => "certificate",
        }
    }

    /// Parses a value of this kind from JSON, refusing unknown fields.
    pub fn parse(self, json: &[u8]) -> Result<Resource, JsonError> {
        Ok(match self {
            Self::Routes => Resource::Route(crate::json::parse(json)?),
            Self::Upstreams => Resource::Upstream(crate::json::parse(json)?),
            Self::Certificates => Resource::Certificate(crate::json::parse(json)?),
        })
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown resource segment in a URL or key.
#[derive(Debug, thiserror::Error)]
#[error("unknown resource kind {0:?}: expected routes, upstreams or certificates")]
pub struct UnknownKind(pub String);

impl FromStr for ResourceKind {
    type Err = UnknownKind;

    /// Accepts the plural and, as the seed writes it, the singular.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "routes" | "route" => Ok(Self::Routes),
            "upstreams" | "upstream" => Ok(Self::Upstreams),
            "certificates" | "certificate" | "ssls" | "ssl" => Ok(Self::Certificates),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

/// One resource of any kind.
// Values are short-lived (one request body, one snapshot entry): boxing the larger
// variants would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Resource {
    Route(Route),
    Upstream(Upstream),
    Certificate(Certificate),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Route(_) => ResourceKind::Routes,
            Self::Upstream(_) => ResourceKind::Upstreams,
            Self::Certificate(_) => ResourceKind::Certificates,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Route(r) => &r.id,
            Self::Upstream(u) => &u.id,
            Self::Certificate(c) => &c.id,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            Self::Route(r) => r.validate(),
            Self::Upstream(u) => u.validate(),
            Self::Certificate(c) => c.validate(),
        }
    }

    /// The form an API may show: certificate keys removed.
    pub fn redacted(&self) -> Self {
        match self {
            Self::Certificate(c) => Self::Certificate(c.redacted()),
            other => other.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("model types always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_and_plural_segments_parse() {
        for (s, k) in [
            ("route", ResourceKind::Routes),
            ("routes", ResourceKind::Routes),
            ("upstream", ResourceKind::Upstreams),
            ("certificates", ResourceKind::Certificates),
        ] {
            assert_eq!(s.parse::<ResourceKind>().unwrap(), k);
        }
        assert!("widgets".parse::<ResourceKind>().is_err());
    }

    #[test]
    fn parse_uses_the_kind_not_a_guess() {
        let r = ResourceKind::Routes
            .parse(br#"{"id":"r","paths":["/"],"upstream_id":"u"}"#)
            .unwrap();
        assert_eq!(r.kind(), ResourceKind::Routes);
        assert_eq!(r.id(), "r");
        assert!(ResourceKind::Upstreams
            .parse(br#"{"id":"r","paths":["/"],"upstream_id":"u"}"#)
            .is_err());
    }
}
