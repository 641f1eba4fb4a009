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
    /// The admin refused a write that named the revision it builds on (409
    /// `revision_conflict`): the instance moved on meanwhile.
    #[error("{message} (409)")]
    RevisionConflict {
        message: String,
        /// The instance's revision now, when the admin said.
        now: Option<u64>,
        details: Vec<(String, String)>,
    },
    /// A write confirmed from a preview found its instance changed since: what was
    /// shown is not what would be written, so nothing was.
    #[error("{what} changed since the preview{}; run again", .now.map(|n| format!(" (now at revision {n})")).unwrap_or_default())]
    StalePreview {
        what: String,
        now: Option<u64>,
        /// What the admin said besides (a namespace-wide apply: the instances written
        /// before the conflict).
        details: Vec<(String, String)>,
    },
    /// An object `create` found existing before writing it (for kinds the API writes
    /// only with `PUT`, where the admin itself would replace it).
    #[error("{0}")]
    Exists(String),
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
        let code = parsed.as_ref().and_then(|v| v["code"].as_str());
        if status == 409 && code == Some("revision_conflict") {
            return CtlError::RevisionConflict {
                message,
                now: None,
                details,
            };
        }
        CtlError::Api {
            status,
            message,
            details,
            origin: None,
        }
    }

    /// A revision conflict with where the instance is now (the admin's
    /// `x-portico-revision` header); any other error as it is.
    pub fn at_revision(self, revision: Option<u64>) -> Self {
        match self {
            CtlError::RevisionConflict {
                message, details, ..
            } => CtlError::RevisionConflict {
                message,
                now: revision,
                details,
            },
            other => other,
        }
    }

    /// For a write confirmed from a preview: a revision conflict says the instance
    /// (`what`) changed since the preview.
    pub fn since_preview(self, what: &str) -> Self {
        match self {
            CtlError::RevisionConflict { now, details, .. } => CtlError::StalePreview {
                what: what.to_owned(),
                now,
                details: details
                    .into_iter()
                    .filter(|(field, _)| !field.ends_with("expected_revision"))
                    .collect(),
            },
            other => other,
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
            CtlError::RevisionConflict { .. }
            | CtlError::StalePreview { .. }
            | CtlError::Exists(_) => code::CONFLICT,
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
        if let CtlError::RevisionConflict { details, .. } | CtlError::StalePreview { details, .. } =
            self
        {
            print_details(details);
        }
        if let CtlError::Api {
            status, details, ..
        } = self
        {
            print_details(details);
            if *status == 401 {
                eprintln!("hint: the token is missing, wrong or expired; log in again with `portico ctl login`");
            }
        }
        ExitCode::from(self.exit_code())
    }
}

/// The `field: message` lines of an error answer, on stderr.
fn print_details(details: &[(String, String)]) {
    for (field, message) in details {
        if field.is_empty() {
            eprintln!("  {message}");
        } else {
            eprintln!("  {field}: {message}");
        }
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
    fn a_revision_conflict_after_a_preview_says_to_run_again() {
        let body = br#"{"error": "instance \"b\" is at revision 8, not 7 as expected", "code": "revision_conflict", "details": [{"field": "expected_revision", "message": "the instance is at revision 8"}]}"#;
        let conflict = CtlError::from_answer(409, body).at_revision(Some(8));
        assert_eq!(conflict.exit_code(), 6);
        let stale = conflict.since_preview("the instance c1/b");
        assert_eq!(
            stale.to_string(),
            "the instance c1/b changed since the preview (now at revision 8); run again"
        );
        assert_eq!(stale.exit_code(), 6);
        // Another 409 stays what it is.
        let in_use = CtlError::from_answer(409, br#"{"error": "in use", "code": "in_use"}"#)
            .since_preview("the instance c1/b");
        assert_eq!(in_use.to_string(), "in use (409)");
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
