//! `redirect` (APISIX's name and fields): the gateway answers a request with a
//! redirect instead of proxying it, in the access phase — plain HTTP to HTTPS, to a
//! URI built from the request (`$uri`, `$request_uri`, `$args`, `$host`, `$scheme`),
//! or to a regex rewrite of the path. The answer goes through the core's one renderer
//! (`Refusal::Answer`), so every engine sends the same bytes.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use regex::Regex;

use crate::core::phase::{PhaseCtx, Plugin, RequestView};
use crate::core::refusal::{Answer, Refusal};

#[derive(Debug)]
pub struct Redirect {
    to: Target,
    status: u16,
    append_query: bool,
}

#[derive(Debug)]
enum Target {
    Https,
    Uri(Vec<Piece>),
    Regex(Regex, String),
}

/// A `uri` template, split once when the config is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    RequestUri,
    Scheme,
    Args,
    Host,
    Uri,
}

/// The variables a template may hold; longest names first (`$request_uri` before
/// `$uri`).
const VARIABLES: [(&str, Piece); 5] = [
    ("$request_uri", Piece::RequestUri),
    ("$scheme", Piece::Scheme),
    ("$args", Piece::Args),
    ("$host", Piece::Host),
    ("$uri", Piece::Uri),
];

impl Redirect {
    pub fn compile(config: &model::plugin::Redirect) -> Result<Self, String> {
        let to = match (&config.uri, &config.regex_uri) {
            _ if config.http_to_https => Target::Https,
            (Some(uri), _) => Target::Uri(parse_template(uri)),
            (None, Some([pattern, template])) => Target::Regex(
                Regex::new(pattern).map_err(|e| format!("plugins.redirect.regex_uri[0]: {e}"))?,
                template.clone(),
            ),
            (None, None) => return Err("plugins.redirect: no target".into()),
        };
        Ok(Self {
            to,
            status: config.status(),
            append_query: config.append_query_string,
        })
    }

    /// Where the request goes, or `None` when this plugin lets it through.
    fn location(&self, req: &RequestView<'_>) -> Option<String> {
        let mut location = match &self.to {
            Target::Https if req.tls => return None,
            Target::Https => {
                let mut location = format!("https://{}", req.host);
                push_request_uri(&mut location, req);
                return Some(location);
            }
            Target::Uri(pieces) => expand(pieces, req),
            Target::Regex(regex, template) => {
                if !regex.is_match(req.path) {
                    return None;
                }
                regex.replace(req.path, template.as_str()).into_owned()
            }
        };
        if self.append_query {
            if let Some(query) = req.query {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.push_str(query);
            }
        }
        Some(location)
    }
}

/// Appends the path and query as the upstream would get them.
fn push_request_uri(out: &mut String, req: &RequestView<'_>) {
    out.push_str(req.path);
    if let Some(query) = req.query {
        out.push('?');
        out.push_str(query);
    }
}

/// Splits a `uri` template into text and variables; an unknown `$name` is text.
fn parse_template(template: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        match VARIABLES.iter().find(|(name, _)| rest.starts_with(name)) {
            Some((name, piece)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece.clone());
                rest = &rest[name.len()..];
            }
            None => {
                text.push('$');
                rest = &rest[1..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// A parsed template with the request's values in place.
fn expand(pieces: &[Piece], req: &RequestView<'_>) -> String {
    let mut out = String::with_capacity(64);
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::RequestUri => push_request_uri(&mut out, req),
            Piece::Scheme => out.push_str(if req.tls { "https" } else { "http" }),
            Piece::Args => out.push_str(req.query.unwrap_or("")),
            Piece::Host => out.push_str(req.host),
            Piece::Uri => out.push_str(req.path),
        }
    }
    out
}

impl Plugin for Redirect {
    fn name(&self) -> &'static str {
        model::plugin::REDIRECT.name
    }

    fn access(&self, req: &RequestView<'_>, _ctx: &mut PhaseCtx) -> Result<(), Refusal> {
        let Some(location) = self.location(req) else {
            return Ok(());
        };
        // The path and query come from a request target, which holds no control
        // characters; a value that still is not a valid field is the gateway's fault.
        let location = HeaderValue::from_str(&location).map_err(|_| Refusal::Internal)?;
        Err(Refusal::Answer(Arc::new(Answer {
            status: self.status,
            headers: vec![(http::header::LOCATION, location)],
            body: Bytes::new(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        path: &'a str,
        query: Option<&'a str>,
        tls: bool,
        headers: &'a http::HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            query,
            host: "api.example.com",
            headers,
            client_ip: None,
            tls,
            scope: &crate::core::phase::NO_SCOPE,
        }
    }

    fn location(config: &str, path: &str, query: Option<&str>, tls: bool) -> Option<String> {
        let config: model::plugin::Redirect = serde_json::from_str(config).unwrap();
        let headers = http::HeaderMap::new();
        Redirect::compile(&config)
            .unwrap()
            .location(&view(path, query, tls, &headers))
    }

    #[test]
    fn targets_are_built_from_the_request() {
        type Case = (
            &'static str,
            &'static str,
            Option<&'static str>,
            bool,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                r#"{"http_to_https":true}"#,
                "/a/b",
                Some("x=1"),
                false,
                Some("https://api.example.com/a/b?x=1"),
            ),
            (r#"{"http_to_https":true}"#, "/a/b", None, true, None),
            (
                r#"{"uri":"/new$uri"}"#,
                "/old",
                Some("q=2"),
                false,
                Some("/new/old"),
            ),
            (
                r#"{"uri":"/new$uri","append_query_string":true}"#,
                "/old",
                Some("q=2"),
                false,
                Some("/new/old?q=2"),
            ),
            (
                r#"{"uri":"/n?a=1","append_query_string":true}"#,
                "/o",
                Some("q=2"),
                true,
                Some("/n?a=1&q=2"),
            ),
            (
                r#"{"uri":"$scheme://$host/x$request_uri"}"#,
                "/p",
                Some("z"),
                true,
                Some("https://api.example.com/x/p?z"),
            ),
            (
                r#"{"uri":"/s?$args&$unknown"}"#,
                "/p",
                Some("k=v"),
                false,
                Some("/s?k=v&$unknown"),
            ),
            (
                r#"{"regex_uri":["^/old/(.*)/(.*)$","/new/$2/${1}x"]}"#,
                "/old/a/b",
                None,
                false,
                Some("/new/b/ax"),
            ),
            (
                r#"{"regex_uri":["^/old/(.*)","/new/$1"]}"#,
                "/other",
                None,
                false,
                None,
            ),
        ];
        for (config, path, query, tls, want) in cases {
            assert_eq!(
                location(config, path, *query, *tls).as_deref(),
                *want,
                "{config} {path} {query:?} tls={tls}"
            );
        }
    }

    #[test]
    fn templates_are_split_once() {
        assert_eq!(
            parse_template("$scheme://$host/x$request_uri?$nope"),
            [
                Piece::Scheme,
                Piece::Text("://".into()),
                Piece::Host,
                Piece::Text("/x".into()),
                Piece::RequestUri,
                Piece::Text("?$nope".into()),
            ]
        );
    }

    #[test]
    fn the_answer_is_a_redirect_with_location() {
        let config: model::plugin::Redirect =
            serde_json::from_str(r#"{"uri":"/n","ret_code":307}"#).unwrap();
        let plugin = Redirect::compile(&config).unwrap();
        let headers = http::HeaderMap::new();
        let Err(Refusal::Answer(answer)) =
            plugin.access(&view("/o", None, false, &headers), &mut PhaseCtx::default())
        else {
            panic!("no answer");
        };
        assert_eq!(answer.status, 307);
        assert_eq!(
            answer.headers,
            [(http::header::LOCATION, HeaderValue::from_static("/n"))]
        );
    }
}
