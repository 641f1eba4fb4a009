//! `proxy-rewrite` (APISIX's plugin): the path, `Host` and headers sent upstream
//! instead of the client's. `uri` may use `$uri` (the normalised path); `regex_uri`
//! rewrites a matching path with `$1`/`${1}` from its captures (the regex is compiled
//! once, with the config). The query string is kept.

use http::HeaderValue;
use regex::Regex;

use super::header_changes::CompiledChanges;
use crate::core::phase::{HeaderEdits, PhaseCtx, Plugin, RequestView};

#[derive(Debug)]
pub struct ProxyRewrite {
    uri: Option<String>,
    regex_uri: Option<(Regex, String)>,
    host: Option<HeaderValue>,
    headers: CompiledChanges,
}

impl ProxyRewrite {
    pub fn compile(config: &model::plugin::ProxyRewrite) -> Result<Self, String> {
        let regex_uri = match &config.regex_uri {
            Some([pattern, template]) => Some((
                Regex::new(pattern).map_err(|e| format!("regex_uri[0]: {e}"))?,
                template.clone(),
            )),
            None => None,
        };
        Ok(Self {
            uri: config.uri.clone(),
            regex_uri,
            host: config
                .host
                .as_deref()
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(|_| "host: not a header value".to_owned())?,
            headers: CompiledChanges::compile(&config.headers)?,
        })
    }

    /// The path sent upstream for `path`; `None` when it stays.
    pub(crate) fn rewrite(&self, path: &str) -> Option<String> {
        if let Some(uri) = &self.uri {
            return Some(uri.replace("$uri", path));
        }
        let (regex, template) = self.regex_uri.as_ref()?;
        let captures = regex.captures(path)?;
        let mut out = String::new();
        captures.expand(template, &mut out);
        Some(out)
    }
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        model::plugin::PROXY_REWRITE.name
    }

    fn upstream_request(&self, req: &RequestView<'_>, _: &mut PhaseCtx, edits: &mut HeaderEdits) {
        if let Some(path) = self.rewrite(req.path) {
            // A rewrite into something that is not a path would break the request
            // line: such a result is not sent.
            if path.starts_with('/')
                && path
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'?' && b != b'#')
            {
                edits.set_path(path);
            }
        }
        if let Some(host) = &self.host {
            edits.set(http::header::HOST, host.clone());
        }
        self.headers.apply(edits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rewritten_by_template_or_regex() {
        let plugin =
            |json: &str| ProxyRewrite::compile(&serde_json::from_str(json).unwrap()).unwrap();
        let fixed = plugin(r#"{"uri":"/v2$uri"}"#);
        assert_eq!(fixed.rewrite("/a/b").as_deref(), Some("/v2/a/b"));
        let regex = plugin(r#"{"regex_uri":["^/api/(\\w+)/(.*)","/${1}-svc/$2"]}"#);
        assert_eq!(
            regex.rewrite("/api/users/1").as_deref(),
            Some("/users-svc/1")
        );
        assert_eq!(regex.rewrite("/other"), None);
    }
}
