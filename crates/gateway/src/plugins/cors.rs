//! `cors`: the gateway answers a CORS preflight from an allowed origin itself (204
//! with the allowed methods, headers and max age) and adds
//! `Access-Control-Allow-Origin` (and the exposed headers, credentials) to responses
//! for allowed origins. Other origins get no CORS headers: the browser withholds the
//! response, as the Fetch standard has it. `Vary: Origin` is sent whenever the answer
//! depends on the origin, so caches keep the variants apart.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin, ReadsHeaders, RequestView};
use crate::core::refusal::{Answer, Refusal};

const ORIGIN: &str = "cors.origin";

#[derive(Debug)]
pub struct Cors {
    /// `None`: any origin.
    origins: Option<Vec<String>>,
    methods: HeaderValue,
    /// `None`: echo what the preflight asks for.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

fn joined(values: &[String]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&values.join(", ")).map_err(|_| "not a header value".to_owned())
}

impl Cors {
    pub fn compile(config: &model::plugin::Cors) -> Result<Self, String> {
        let any = |list: &[String]| list.iter().any(|o| o == "*");
        Ok(Self {
            origins: (!any(&config.allow_origins)).then(|| config.allow_origins.clone()),
            methods: joined(&config.allow_methods)?,
            headers: (!any(&config.allow_headers))
                .then(|| joined(&config.allow_headers))
                .transpose()?,
            expose: (!config.expose_headers.is_empty())
                .then(|| joined(&config.expose_headers))
                .transpose()?,
            max_age: HeaderValue::from(config.max_age),
            credentials: config.allow_credentials,
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins
            .as_ref()
            .is_none_or(|list| list.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    }

    /// `Access-Control-Allow-Origin` (and credentials) for an allowed `origin`.
    fn origin_fields(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut fields = Vec::with_capacity(3);
        let value = if self.origins.is_none() && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        fields.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, value));
        if self.credentials {
            fields.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if self.origins.is_some() || self.credentials {
            fields.push((http::header::VARY, HeaderValue::from_static("Origin")));
        }
        fields
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        model::plugin::CORS.name
    }

    fn reads_headers(&self) -> ReadsHeaders {
        ReadsHeaders::named([
            http::header::ORIGIN,
            http::header::ACCESS_CONTROL_REQUEST_METHOD,
            http::header::ACCESS_CONTROL_REQUEST_HEADERS,
        ])
    }

    fn access(&self, req: &RequestView<'_>, ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let Some(origin) = req.headers.get(http::header::ORIGIN) else {
            return Ok(());
        };
        if !origin.to_str().is_ok_and(|o| self.allows(o)) {
            return Ok(());
        }
        let preflight = req.method == "OPTIONS"
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            ctx.set(ORIGIN, origin.clone());
            return Ok(());
        }
        let mut headers = self.origin_fields(origin);
        headers.push((
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods.clone(),
        ));
        let asked = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(allowed) = self.headers.clone().or_else(|| asked.cloned()) {
            headers.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, allowed));
        }
        headers.push((http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        Err(Refusal::Answer(Arc::new(Answer {
            status: 204,
            headers,
            body: Bytes::new(),
        })))
    }

    fn response_head(&self, _status: u16, ctx: &mut PhaseCtx, edits: &mut HeaderEdits) {
        let Some(origin) = ctx.get(ORIGIN).cloned() else {
            return;
        };
        for (name, value) in self.origin_fields(&origin) {
            if name == http::header::VARY {
                edits.add(name, value);
            } else {
                edits.set(name, value);
            }
        }
        if let Some(expose) = &self.expose {
            edits.set(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}
