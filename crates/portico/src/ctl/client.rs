//! The admin API over HTTP/JSON: one request function that adds the token, the
//! revision message and the dry-run flag, and turns every failure into a
//! [`CtlError`] (so into an exit code) in one place.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use super::error::{CtlError, Result};

/// Where the admin API lives under the admin's URL.
pub const API_PREFIX: &str = "/gateway/apiserver/v1";

/// Header carrying the message of the revision a write makes.
const MESSAGE_HEADER: &str = "x-portico-message";

/// Header carrying the instance's revision: the one a write made, or on a revision
/// conflict the one the instance is at.
const REVISION_HEADER: &str = "x-portico-revision";

/// A connection to one admin, with or without a token.
pub struct Client {
    http: reqwest::Client,
    /// The admin's URL (no trailing slash, no API prefix).
    admin: String,
    token: Option<String>,
}

/// An answer with a success status.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The JSON body; `Null` when empty (204) or not JSON.
    pub body: Value,
    /// The body as text (an export in YAML).
    pub text: String,
}

impl Answer {
    /// A header's value as text, when present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a write carries besides its body.
#[derive(Default, Clone, Copy)]
pub struct WriteOptions<'a> {
    /// The revision message (`x-portico-message`).
    pub message: Option<&'a str>,
    /// `?dry_run=true`: checked and answered, nothing written.
    pub dry_run: bool,
    /// `?expected_revision=N`: written only if the instance is still at revision N
    /// (the one a preview saw), else refused with a revision conflict.
    pub expected_revision: Option<u64>,
}

/// A request body.
pub enum Body {
    Json(Value),
    None,
}

impl Client {
    pub fn new(admin: String, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("portico-ctl/", env!("CARGO_PKG_VERSION")))
            // The admin never redirects; following one would carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {e}"))?;
        Ok(Self { http, admin, token })
    }

    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer> {
        self.send(
            Method::GET,
            path,
            query,
            Body::None,
            WriteOptions::default(),
        )
        .await
    }

    /// A request to `{admin}/gateway/apiserver/v1{path}`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
        write: WriteOptions<'_>,
    ) -> Result<Answer> {
        let url = format!("{}{API_PREFIX}{path}", self.admin);
        let mut request = self.http.request(method, &url);
        if !query.is_empty() {
            request = request.query(query);
        }
        if write.dry_run {
            request = request.query(&[("dry_run", "true")]);
        }
        if let Some(expected) = write.expected_revision {
            request = request.query(&[("expected_revision", expected)]);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(message) = write.message {
            request = request.header(MESSAGE_HEADER, message);
        }
        if let Body::Json(value) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(value.to_string());
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !(200..300).contains(&status) {
            // On a revision conflict the header says where the instance is now.
            let now = headers
                .get(REVISION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            return Err(CtlError::from_answer(status, &bytes).at_revision(now));
        }
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        let body = if json {
            serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("the admin's answer to {url} is not JSON: {e}"))?
        } else {
            Value::Null
        };
        Ok(Answer {
            status,
            headers,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> CtlError {
        if e.is_builder() {
            // The request could not be made (a header value, a URL): nothing was sent.
            return CtlError::Other(anyhow::anyhow!("cannot make the request: {e}"));
        }
        // The innermost cause says why (connection refused, timed out, DNS).
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        if e.is_timeout() {
            reason = format!("no answer in time ({reason})");
        }
        CtlError::Unreachable {
            admin: self.admin.clone(),
            reason,
        }
    }
}

/// A path segment, percent-encoded (ids are plain, but a name typed by hand may not
/// be).
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("r-1_a.b~"), "r-1_a.b~");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
