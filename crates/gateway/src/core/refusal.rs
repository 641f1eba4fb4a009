//! The one error renderer: every gateway error (a refused request, an upstream that
//! failed) becomes a [`Refusal`], and a refusal becomes one JSON body and one set of
//! codes whichever engine answers: [`Refusal::response`] for Pingora's adapter,
//! [`Refusal::to_h1`] for the fast path and the connection guard, which write bytes.
//! A plugin that answers a request itself (a redirect …) gives a [`Refusal::Answer`],
//! rendered by the same two functions.

use std::sync::Arc;

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;

/// Why a request gets an error response instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoRoute,
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge,
    MethodNotAllowed(Vec<&'static str>),
    /// CONNECT: the gateway proxies requests, not tunnels (Pingora's default too).
    Connect,
    /// A filter of the matched route refused the request; the filter's message.
    Forbidden(Arc<str>),
    /// The client sent something that could not be read as a request.
    BadRequest,
    RequestTimeout,
    /// The upstream could not be reached, or failed mid-response.
    BadGateway,
    GatewayTimeout,
    Internal,
    /// A status raised explicitly as `ErrorType::HTTPStatus`.
    Status(u16),
    /// A plugin answered the request itself (a redirect, a CORS preflight …): its
    /// status, headers and body instead of the JSON error.
    Answer(Arc<Answer>),
    /// A plugin refused the request with its own status, message and header fields
    /// (401 with `WWW-Authenticate`, 429 with `Retry-After` …); the body is the usual
    /// JSON error.
    Denied(Arc<Denial>),
}

/// A plugin's refusal: see [`Refusal::Denied`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub message: Arc<str>,
    /// The JSON body's machine code (`unauthorized`, `rate_limited` …).
    pub code: &'static str,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A response a plugin gives in place of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

impl Refusal {
    /// A plugin's refusal without extra header fields.
    pub fn denied(status: u16, code: &'static str, message: impl Into<Arc<str>>) -> Refusal {
        Self::denied_with(status, code, message, Vec::new())
    }

    /// A plugin's refusal with header fields (`WWW-Authenticate`, `Retry-After` …).
    pub fn denied_with(
        status: u16,
        code: &'static str,
        message: impl Into<Arc<str>>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Refusal {
        Refusal::Denied(Arc::new(Denial {
            status,
            message: message.into(),
            code,
            headers,
        }))
    }
}

impl Refusal {
    /// The one place an error becomes a status: Pingora's error classification (which
    /// side failed, what failed) → refusal. `None` when the client is gone.
    pub fn from_error(e: &Error) -> Option<Refusal> {
        use ErrorType::*;
        if let HTTPStatus(status) = e.etype() {
            return Some(Refusal::Status(*status));
        }
        Some(match (e.esource(), e.etype()) {
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, ReadTimedout) => Refusal::RequestTimeout,
            (ErrorSource::Downstream, _) => Refusal::BadRequest,
            (
                ErrorSource::Upstream,
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
            ) => Refusal::GatewayTimeout,
            (ErrorSource::Upstream, _) => Refusal::BadGateway,
            (ErrorSource::Internal | ErrorSource::Unset, _) => Refusal::Internal,
        })
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge => 431,
            Refusal::BodyTooLarge => 413,
            Refusal::MethodNotAllowed(_) | Refusal::Connect => 405,
            Refusal::Forbidden(_) => 403,
            Refusal::BadRequest => 400,
            Refusal::RequestTimeout => 408,
            Refusal::BadGateway => 502,
            Refusal::GatewayTimeout => 504,
            Refusal::Internal => 500,
            Refusal::Status(status) => *status,
            Refusal::Answer(answer) => answer.status,
            Refusal::Denied(denial) => denial.status,
        }
    }

    /// `(message, machine code)` of the JSON body.
    pub fn describe(&self) -> (&str, &'static str) {
        match self {
            Refusal::NoRoute => ("no route matches the request", "route_not_found"),
            Refusal::UriTooLong => ("the request target is too long", "uri_too_long"),
            Refusal::HeadersTooLarge => (
                "the request header fields are too large",
                "request_header_fields_too_large",
            ),
            Refusal::BodyTooLarge => ("the request body is too large", "payload_too_large"),
            Refusal::MethodNotAllowed(_) => ("method not allowed", "method_not_allowed"),
            Refusal::Connect => ("CONNECT is not supported", "method_not_allowed"),
            Refusal::Forbidden(message) => (message, "forbidden"),
            Refusal::BadRequest => ("the request could not be read", "bad_request"),
            Refusal::RequestTimeout => ("the request was not received in time", "request_timeout"),
            Refusal::BadGateway => ("the upstream could not be reached", "bad_gateway"),
            Refusal::GatewayTimeout => ("the upstream did not answer in time", "gateway_timeout"),
            Refusal::Internal => ("internal gateway error", "internal_error"),
            Refusal::Status(501) => (
                "the request's transfer coding is not implemented",
                "not_implemented",
            ),
            Refusal::Status(_) => ("the request was refused", "refused"),
            Refusal::Answer(_) => ("answered by a plugin", "answered"),
            Refusal::Denied(denial) => (&denial.message, denial.code),
        }
    }

    /// The body of the response: the JSON error, or a plugin's answer.
    pub fn body(&self) -> Bytes {
        if let Refusal::Answer(answer) = self {
            return answer.body.clone();
        }
        let (message, code) = self.describe();
        Bytes::from(serde_json::json!({ "error": message, "code": code }).to_string())
    }

    /// The response's header fields besides Content-Length (and, on HTTP/1,
    /// Connection), in order.
    fn fields(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let json = (
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        match self {
            Refusal::Answer(answer) => answer.headers.clone(),
            Refusal::MethodNotAllowed(allow) => vec![
                json,
                (
                    http::header::ALLOW,
                    http::HeaderValue::from_str(&allow.join(", "))
                        .unwrap_or(http::HeaderValue::from_static("")),
                ),
            ],
            Refusal::Denied(denial) => {
                let mut fields = Vec::with_capacity(1 + denial.headers.len());
                fields.push(json);
                fields.extend(denial.headers.iter().cloned());
                fields
            }
            _ => vec![json],
        }
    }

    /// The complete response.
    pub fn response(&self) -> Result<(ResponseHeader, Bytes)> {
        let body = self.body();
        let fields = self.fields();
        let mut header = ResponseHeader::build(self.status(), Some(fields.len() + 1))?;
        for (name, value) in fields {
            header.append_header(name, value)?;
        }
        header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        Ok((header, body))
    }

    /// Whether the connection may carry another request after this refusal: only
    /// for a well-formed request refused by routing; a request whose framing is in
    /// doubt, or too big to skip, closes it.
    pub fn keeps_connection(&self) -> bool {
        matches!(
            self,
            Refusal::NoRoute
                | Refusal::MethodNotAllowed(_)
                | Refusal::Answer(_)
                | Refusal::Denied(_)
        )
    }

    /// The complete HTTP/1.1 response, `Connection: close` (for the engines that
    /// write bytes, which close after a refusal unless [`Self::to_h1_open`] applies).
    pub fn to_h1(&self) -> Vec<u8> {
        self.h1(true)
    }

    /// The response for a connection that stays open: only for a refusal that
    /// [keeps it](Self::keeps_connection), of a request whose body was read whole.
    pub fn to_h1_open(&self) -> Vec<u8> {
        self.h1(false)
    }

    fn h1(&self, close: bool) -> Vec<u8> {
        use std::io::Write;
        let body = self.body();
        let status = self.status();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = Vec::with_capacity(160 + body.len());
        let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        use ErrorType::*;
        let cases = [
            (ErrorSource::Upstream, ConnectRefused, Some(502)),
            (ErrorSource::Upstream, ConnectNoRoute, Some(502)),
            (ErrorSource::Upstream, ConnectionClosed, Some(502)),
            (ErrorSource::Upstream, ConnectTimedout, Some(504)),
            (ErrorSource::Upstream, ReadTimedout, Some(504)),
            (ErrorSource::Upstream, WriteTimedout, Some(504)),
            (ErrorSource::Downstream, ReadTimedout, Some(408)),
            (ErrorSource::Downstream, InvalidHTTPHeader, Some(400)),
            (ErrorSource::Downstream, ConnectionClosed, None),
            (ErrorSource::Downstream, WriteError, None),
            (ErrorSource::Internal, InternalError, Some(500)),
            (ErrorSource::Unset, HTTPStatus(429), Some(429)),
        ];
        for (source, etype, want) in cases {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            assert_eq!(
                Refusal::from_error(&e).map(|r| r.status()),
                want,
                "{source:?} {etype:?}"
            );
        }
    }

    #[test]
    fn refusals_are_json_with_a_code() {
        let (header, body) = Refusal::MethodNotAllowed(vec!["GET", "HEAD"])
            .response()
            .unwrap();
        assert_eq!(header.status, 405);
        assert_eq!(header.headers["allow"], "GET, HEAD");
        assert_eq!(header.headers["content-type"], "application/json");
        assert_eq!(header.headers["content-length"], body.len().to_string());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "method not allowed", "code": "method_not_allowed"})
        );
        let (header, body) = Refusal::NoRoute.response().unwrap();
        assert_eq!(header.status, 404);
        assert!(header.headers.get("allow").is_none());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": "no route matches the request", "code": "route_not_found"})
        );
    }

    #[test]
    fn bytes_and_header_carry_the_same_answer() {
        for refusal in [
            Refusal::BadRequest,
            Refusal::MethodNotAllowed(vec!["GET"]),
            Refusal::Status(501),
            Refusal::Answer(Arc::new(Answer {
                status: 301,
                headers: vec![(
                    http::header::LOCATION,
                    http::HeaderValue::from_static("https://a.io/x"),
                )],
                body: Bytes::new(),
            })),
        ] {
            let raw = refusal.to_h1();
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut headers);
            let len = match parsed.parse(&raw).unwrap() {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(parsed.code, Some(refusal.status()));
            assert_eq!(&raw[len..], &refusal.body()[..]);
            let (header, _) = refusal.response().unwrap();
            for h in parsed.headers.iter() {
                if h.name != "Connection" {
                    assert_eq!(header.headers[h.name].as_bytes(), h.value, "{}", h.name);
                }
            }
        }
    }
}
