//! What can go wrong in a `ctl` command and the exit code each failure gives, the one
//! place a failure becomes a code (the table is in `docs/cli.md` and `portico ctl
//! --help`).

use std::process::ExitCode;

use serde_json::Value;

/// A failed command. Each variant says which side failed; [`CtlError::exit_code`] is
/// what scripts see.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is incomplete in a way clap cannot see (a value neither given
    /// nor in the environment), or a confirmation is needed where nobody can answer.
    #[error("{0}")]
    Usage(String),
    /// No token to send: nobody logged in and none given.
    #[error("not logged in: run `portico ctl login --admin URL --user NAME`, or give --token (PORTICO_TOKEN)")]
    NotLoggedIn,
    /// The stored session has ended (its end is known without asking the admin).
    #[error("the session of the last login ended at {0}: log in again with `portico ctl login`")]
    SessionEnded(String),
    /// A local file that does not parse or is not the expected shape.
    #[error("{0}")]
    Input(String),
    /// The admin answered with an error status.
    #[error("{}", api_message(.status, .message, .origin.as_deref()))]
    Api {
        status: u16,
        message: String,
        details: Vec<(String, String)>,
        /// The file the request was made from, to name it in the message.
        origin: Option<String>,
    },
    /// The admin could not be reached, or did not answer in time.
    #[error("cannot reach the admin at {admin}: {reason}")]
    Unreachable { admin: String, reason: String },
    /// Anything else (local IO, an answer that is not the JSON expected).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, CtlError>;

/// Exit codes (documented in `docs/cli.md`).
pub mod code {
    pub const OTHER: u8 = 1;
    /// clap's own code for a bad command line; ours for the same kind of mistake.
    pub const USAGE: u8 = 2;
    pub const UNAUTHENTICATED: u8 = 3;
    pub const FORBIDDEN: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const CONFLICT: u8 = 6;
    pub const INVALID: u8 = 7;
    pub const UNAVAILABLE: u8 = 8;
}

impl CtlError {
    /// An error answer of the admin: `{"error", "code", "details": [{"field",
    /// "message"}]}`, or whatever text came with the status.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let message = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body).trim().to_owned();
                if text.is_empty() {
                    format!("the admin answered {status}")
                } else {
                    text
                }
            });
        let details = parsed
            .as_ref()
            .and_then(|v| v["details"].as_array())
            .map(|list| {
                list.iter()
                    .map(|d| {
                        (
                            d["field"].as_str().unwrap_or("").to_owned(),
                            d["message"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        CtlError::Api {
            status,
            message,
            details,
            origin: None,
        }
    }

    /// The same error, naming the file the request came from.
    pub fn in_file(self, file: &str) -> Self {
        match self {
            CtlError::Api {
                status,
                message,
                details,
                origin: None,
            } => CtlError::Api {
                status,
                message,
                details,
                origin: Some(file.to_owned()),
            },
            other => other,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => code::USAGE,
            CtlError::NotLoggedIn | CtlError::SessionEnded(_) => code::UNAUTHENTICATED,
            CtlError::Input(_) => code::INVALID,
            CtlError::Api { status, .. } => match status {
                401 => code::UNAUTHENTICATED,
                403 => code::FORBIDDEN,
                404 => code::NOT_FOUND,
                409 => code::CONFLICT,
                400 | 413 | 422 => code::INVALID,
                500.. => code::UNAVAILABLE,
                _ => code::OTHER,
            },
            CtlError::Unreachable { .. } => code::UNAVAILABLE,
            CtlError::Other(_) => code::OTHER,
        }
    }

    /// Writes the error to stderr (with the field details and a hint where one helps)
    /// and gives the exit code.
    pub fn report(&self) -> ExitCode {
        match self {
            CtlError::Other(e) => eprintln!("error: {e:#}"),
            other => eprintln!("error: {other}"),
        }
        if let CtlError::Api {
            status, details, ..
        } = self
        {
            for (field, message) in details {
                if field.is_empty() {
                    eprintln!("  {message}");
                } else {
                    eprintln!("  {field}: {message}");
                }
            }
            if *status == 401 {
                eprintln!("hint: the token is missing, wrong or expired; log in again with `portico ctl login`");
            }
        }
        ExitCode::from(self.exit_code())
    }
}

fn api_message(status: &u16, message: &str, origin: Option<&str>) -> String {
    match origin {
        Some(file) => format!("{file}: {message} ({status})"),
        None => format!("{message} ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let cases = [
            (401, 3),
            (403, 4),
            (404, 5),
            (409, 6),
            (400, 7),
            (413, 7),
            (422, 7),
            (500, 8),
            (503, 8),
            (408, 1),
        ];
        for (status, want) in cases {
            assert_eq!(
                CtlError::from_answer(status, b"").exit_code(),
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn error_bodies_keep_their_fields() {
        let body = br#"{"error": "invalid route", "code": "invalid", "details": [{"field": "paths[0]", "message": "must start with '/'"}]}"#;
        let error = CtlError::from_answer(422, body).in_file("r.yaml");
        assert_eq!(error.to_string(), "r.yaml: invalid route (422)");
        let CtlError::Api { details, .. } = error else {
            panic!("not an API error")
        };
        assert_eq!(
            details,
            [("paths[0]".to_owned(), "must start with '/'".to_owned())]
        );
        assert_eq!(
            CtlError::from_answer(502, b"bad gateway").to_string(),
            "bad gateway (502)"
        );
    }
}
