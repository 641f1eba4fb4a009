//! The admin API's errors and their one mapping to HTTP statuses and JSON bodies.
//!
//! Every handler returns [`ApiError`]; nothing else in the crate picks a status code for
//! a failure, and the body is rendered by `apikit::error`, shared with the agent.
//! Variants say which side failed: the caller (400/404/408/409/413/422, do not retry
//! unchanged; 401 without a valid token, 403 with the wrong role), a dependency that is down (503, retry
//! later), or the admin itself (500).

use apikit::error::BodyFailure;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::cluster::REVISION_HEADER;
use model::snapshot::Revision;
use model::validate::{FieldError, ValidationErrors};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid token, or a sign-in that failed.
    #[error("unauthorized")]
    Unauthorized,
    /// Authenticated, but the caller's role does not allow this (or not in this
    /// namespace).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The resource (or cluster) exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Refused because other config depends on the target (routes on an upstream,
    /// resources on a cluster's instances).
    #[error("{message}")]
    InUse {
        message: String,
        details: Vec<FieldError>,
    },
    /// The body is not the JSON the endpoint takes (syntax, unknown field, wrong type).
    #[error("{message}")]
    BadRequest {
        message: String,
        details: Vec<FieldError>,
    },
    /// Well-formed, but breaks rules; every broken rule is listed.
    #[error("invalid {what}")]
    Invalid {
        what: String,
        errors: ValidationErrors,
    },
    /// The write named the revision it builds on (`expected_revision`) and the
    /// instance is at another one: someone changed it since the caller looked.
    /// `field` names where the expectation was given.
    #[error("instance {instance:?} is at revision {current}, not {expected} as expected")]
    RevisionConflict {
        instance: String,
        current: Revision,
        expected: Revision,
        field: String,
    },
    /// A write across several instances stopped at `cause` after `written` (one
    /// detail per instance written) had been stored: those stay, the rest are unchanged.
    #[error("{cause}; written before it stopped: {}", .written.iter().map(|w| w.field.as_str()).collect::<Vec<_>>().join(", "))]
    PartlyWritten {
        cause: Box<ApiError>,
        written: Vec<FieldError>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive within the body deadline (`apikit::limits`).
    #[error("the request body did not arrive in time")]
    BodyTimedOut,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A secret (`field`) cannot be stored: the admin has no data key to seal it with.
    #[error("{field} cannot be stored: the admin has no data key to encrypt it with; start the admin with --data-key-file (PORTICO_DATA_KEY_FILE) or PORTICO_DATA_KEY")]
    NoDataKey { field: String },
    /// A cluster's agent cannot be reached now (or its address is not verified);
    /// retrying later is safe.
    #[error("{0}")]
    AgentUnavailable(String),
    /// A cluster's agent refused a call the admin relayed (a version mismatch).
    #[error("{0}")]
    AgentRefused(String),
    /// The database cannot be reached now; retrying later is safe.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A bug or an unexpected database answer; logged, never shown in detail.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A single-field validation failure.
    pub(crate) fn invalid_field(what: &str, field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            what: what.to_owned(),
            errors: ValidationErrors(vec![FieldError {
                field: field.to_owned(),
                message: message.into(),
            }]),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            ApiError::InUse { .. } => (StatusCode::CONFLICT, "in_use"),
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::RevisionConflict { .. } => (StatusCode::CONFLICT, "revision_conflict"),
            ApiError::PartlyWritten { cause, .. } => cause.status_and_code(),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimedOut => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NoDataKey { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_data_key"),
            ApiError::AgentUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable"),
            ApiError::AgentRefused(_) => (StatusCode::BAD_GATEWAY, "agent_refused"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::Unavailable(e)
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        match BodyFailure::of(&e) {
            BodyFailure::TooLarge => ApiError::PayloadTooLarge(format!(
                "the request body is larger than {} bytes",
                crate::api::MAX_BODY
            )),
            BodyFailure::TimedOut => ApiError::BodyTimedOut,
            BodyFailure::Other(message) => ApiError::BadRequest {
                message,
                details: Vec::new(),
            },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest {
            message: e.body_text(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Unauthorized = self {
            return apikit::error::unauthorized();
        }
        if let ApiError::BodyTimedOut = self {
            // Also closes the connection: the rest of the body is never read.
            return apikit::error::request_timeout();
        }
        let (status, code) = self.status_and_code();
        let cause = match &self {
            ApiError::PartlyWritten { cause, .. } => cause.as_ref(),
            other => other,
        };
        match cause {
            ApiError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
            }
            ApiError::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
            }
            _ => {}
        }
        let mut details = match &self {
            ApiError::PartlyWritten { written, .. } => written.clone(),
            _ => Vec::new(),
        };
        details.extend(cause.details());
        let mut response = apikit::error::response(status, code, self.to_string(), details);
        if let ApiError::RevisionConflict { current, .. } = cause {
            // Machine-readable: where the instance is now (a client's "run again").
            response.headers_mut().insert(
                axum::http::HeaderName::from_static(REVISION_HEADER),
                axum::http::HeaderValue::from(current.0),
            );
        }
        response
    }
}

impl ApiError {
    /// The field details an answer lists for this error.
    fn details(&self) -> Vec<FieldError> {
        match self {
            ApiError::BadRequest { details, .. } | ApiError::InUse { details, .. } => {
                details.clone()
            }
            ApiError::Invalid { errors, .. } => errors.0.clone(),
            ApiError::NoDataKey { field } => vec![FieldError {
                field: field.clone(),
                message: "is a secret and is never stored unencrypted".to_owned(),
            }],
            ApiError::RevisionConflict { current, field, .. } => vec![FieldError {
                field: field.clone(),
                message: format!("the instance is at revision {current}"),
            }],
            ApiError::PartlyWritten { cause, .. } => cause.details(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_has_its_status_and_a_json_body() {
        let cases = [
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::AlreadyExists("x".into()), 409, "already_exists"),
            (
                ApiError::invalid_field("route", "id", "bad"),
                422,
                "invalid",
            ),
            (
                ApiError::RevisionConflict {
                    instance: "a".into(),
                    current: Revision(4),
                    expected: Revision(3),
                    field: "expected_revision".into(),
                },
                409,
                "revision_conflict",
            ),
            (
                ApiError::PartlyWritten {
                    cause: Box::new(ApiError::Unavailable(sqlx::Error::PoolTimedOut)),
                    written: Vec::new(),
                },
                503,
                "unavailable",
            ),
            (
                ApiError::PayloadTooLarge("big".into()),
                413,
                "payload_too_large",
            ),
            (
                ApiError::Unavailable(sqlx::Error::PoolTimedOut),
                503,
                "unavailable",
            ),
            (
                ApiError::Internal(anyhow::anyhow!("secret detail")),
                500,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let (s, c) = error.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code), "{error}");
        }
        // Internal errors never show their cause to the caller.
        assert_eq!(
            ApiError::Internal(anyhow::anyhow!("secret detail")).to_string(),
            "internal error"
        );
    }
}
