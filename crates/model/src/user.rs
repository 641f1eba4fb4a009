//! Users of the admin, their roles per namespace, API tokens and sign-in, as the API
//! exchanges them. Passwords travel only in requests (`UserSpec`, `Login`) and are
//! never answered; the admin keeps their argon2 hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{check_id, ValidationErrors, Validator};

/// What a user may do in one namespace; each role includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in the namespace.
    Viewer,
    /// Also changes its instances' config (and rolls it back).
    Editor,
    /// Also renames the namespace and reads its audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;
/// Longest password accepted (argon2 hashes anything, but a bound keeps requests small).
pub const MAX_PASSWORD: usize = 1024;

/// A user as an operator writes it. `password` is write-only; on update, an absent
/// password keeps the current one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub platform_admin: bool,
    /// Namespace id → role.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("platform_admin", &self.platform_admin)
            .field("roles", &self.roles)
            .finish()
    }
}

impl UserSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        check_id(&mut v, "name", &self.name);
        if let Some(password) = &self.password {
            check_password(&mut v, "password", password);
        }
        for namespace in self.roles.keys() {
            check_id(&mut v, &format!("roles.{namespace}"), namespace);
        }
        v.finish()
    }
}

/// Checks a new password's length; never quotes it.
pub fn check_password(v: &mut Validator, field: &str, password: &str) {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        v.error(
            field,
            format!("must be at least {MIN_PASSWORD} characters long"),
        );
    } else if n > MAX_PASSWORD {
        v.error(field, format!("must be at most {MAX_PASSWORD} characters"));
    }
}

/// A user as the API answers it: never a password or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub name: String,
    pub platform_admin: bool,
    pub roles: BTreeMap<String, Role>,
    /// Whether the user can sign in with a password (else tokens only).
    pub has_password: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Body of `POST /login`.
#[derive(Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
}

/// Body of `POST /users/{name}/tokens`: an API token for automation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// What the token is for (`ci`, `terraform`).
    pub name: String,
    /// Expires after this many days; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
}

impl TokenSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::new();
        if self.name.trim().is_empty() || self.name.chars().count() > 255 {
            v.error("name", "must be 1 to 255 characters");
        }
        if let Some(days) = self.expires_in_days {
            if !(1..=3650).contains(&days) {
                v.error("expires_in_days", "must be 1 to 3650");
            }
        }
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_users_checked() {
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        let spec: UserSpec = serde_json::from_str(
            r#"{"name":"ops","password":"short","roles":{"default":"editor","a b":"viewer"}}"#,
        )
        .unwrap();
        let errors = spec.validate().unwrap_err().0;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["password", "roles.a b"]);
        assert!(!errors[0].message.contains("short"));
        assert!(!format!("{spec:?}").contains("short"));
        assert!(serde_json::from_str::<UserSpec>(r#"{"name":"x","roles":{"d":"owner"}}"#).is_err());
    }
}
