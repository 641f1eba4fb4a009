//! Users, their roles per namespace, and their tokens (API tokens and console
//! sessions), kept by SHA-256 only; passwords by their argon2id hash only.

use std::collections::BTreeMap;

use model::user::{Role, User};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{is_unique_violation, optional_text, text, Db};
use crate::error::ApiError;

/// The platform admin the migrations create; the first-start admin token is its.
pub(crate) const FIRST_ADMIN: &str = "admin";
/// The id of that token's row.
const BOOTSTRAP_TOKEN: &str = "bootstrap";

/// A token's kind: an API token for automation, or a console session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Token,
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Token => "token",
            TokenKind::Session => "session",
        }
    }
}

/// Who a presented token belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TokenOwner {
    pub token_id: String,
    pub kind: TokenKind,
    pub user: User,
}

/// An API token as listed (never the token).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TokenInfo {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl Db {
    /// The owner of the token whose SHA-256 (hex) is `hash`, unless it expired.
    pub(crate) async fn token_owner(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<TokenOwner>, ApiError> {
        let sql = self.sql(
            "SELECT t.id AS id, t.kind AS kind, t.expires_at AS expires_at, \
             t.last_used_at AS last_used_at, t.user_name AS user_name \
             FROM api_tokens t WHERE t.token_sha256 = ?",
        );
        let Some(row) = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        if expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let token_id = text(&row, "id")?;
        let kind = match text(&row, "kind")?.as_str() {
            "session" => TokenKind::Session,
            _ => TokenKind::Token,
        };
        let Some(user) = self.user(&text(&row, "user_name")?).await? else {
            return Ok(None);
        };
        // Noted at most once a minute: reads stay reads.
        let last_used: Option<i64> = row.try_get("last_used_at")?;
        if last_used.is_none_or(|at| at + 60 <= now) {
            let sql = self.sql("UPDATE api_tokens SET last_used_at = ? WHERE id = ?");
            sqlx::query(&sql)
                .bind(now)
                .bind(&token_id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(TokenOwner {
            token_id,
            kind,
            user,
        }))
    }

    /// Makes `hash` the first platform admin's token (a given `PORTICO_ADMIN_TOKEN`
    /// or the first start's), re-creating that user as a platform admin if it was
    /// deleted: the operator's way back in.
    pub(crate) async fn set_bootstrap_token(&self, hash: &str, now: i64) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let sql = self.sql("UPDATE users SET platform_admin = 1 WHERE name = ?");
        let done = sqlx::query(&sql)
            .bind(FIRST_ADMIN)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            let sql = self.sql(
                "INSERT INTO users (name, password_hash, platform_admin, created_at, updated_at) \
                 VALUES (?, NULL, 1, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(FIRST_ADMIN)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let sql = self.sql("UPDATE api_tokens SET token_sha256 = ?, user_name = ? WHERE id = ?");
        let done = sqlx::query(&sql)
            .bind(hash)
            .bind(FIRST_ADMIN)
            .bind(BOOTSTRAP_TOKEN)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            let sql = self.sql(
                "INSERT INTO api_tokens (id, user_name, token_sha256, name, kind, created_at) \
                 VALUES (?, ?, ?, 'the first-start admin token', 'token', ?)",
            );
            sqlx::query(&sql)
                .bind(BOOTSTRAP_TOKEN)
                .bind(FIRST_ADMIN)
                .bind(hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn user(&self, name: &str) -> Result<Option<User>, ApiError> {
        let sql = self.sql(
            "SELECT name, password_hash, platform_admin, created_at, updated_at FROM users WHERE name = ?",
        );
        let Some(row) = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut user = user_from_row(&row)?;
        user.roles = self.roles_of(name).await?;
        Ok(Some(user))
    }

    pub(crate) async fn require_user(&self, name: &str) -> Result<User, ApiError> {
        self.user(name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("user {name:?} does not exist")))
    }

    /// The argon2 hash of the user's password, if it has one.
    pub(crate) async fn password_hash(&self, name: &str) -> Result<Option<String>, ApiError> {
        let sql = self.sql("SELECT password_hash FROM users WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => optional_text(&row, "password_hash")?,
            None => None,
        })
    }

    async fn roles_of(&self, name: &str) -> Result<BTreeMap<String, Role>, ApiError> {
        let sql = self.sql("SELECT namespace, role FROM user_roles WHERE user_name = ?");
        let rows = sqlx::query(&sql).bind(name).fetch_all(&self.pool).await?;
        let mut roles = BTreeMap::new();
        for row in &rows {
            if let Some(role) = Role::parse(&text(row, "role")?) {
                roles.insert(text(row, "namespace")?, role);
            }
        }
        Ok(roles)
    }

    pub(crate) async fn users(&self) -> Result<Vec<User>, ApiError> {
        let sql = self.sql(
            "SELECT name, password_hash, platform_admin, created_at, updated_at FROM users ORDER BY name",
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut user = user_from_row(row)?;
            user.roles = self.roles_of(&user.name).await?;
            users.push(user);
        }
        Ok(users)
    }

    /// Creates (`create`) or replaces a user: its admin flag and roles, and its
    /// password hash when `password_hash` is given (else the current one stays).
    /// Every namespace named must exist; the last platform admin stays one.
    pub(crate) async fn save_user(
        &self,
        name: &str,
        password_hash: Option<&str>,
        platform_admin: bool,
        roles: &BTreeMap<String, Role>,
        create: bool,
        now: i64,
    ) -> Result<User, ApiError> {
        let mut tx = self.pool.begin().await?;
        if create {
            let sql = self.sql(
                "INSERT INTO users (name, password_hash, platform_admin, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(name)
                .bind(password_hash)
                .bind(i64::from(platform_admin))
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        ApiError::AlreadyExists(format!("user {name:?} already exists"))
                    } else {
                        e.into()
                    }
                })?;
        } else {
            let sql = self.sql(
                "UPDATE users SET platform_admin = ?, updated_at = ?, \
                 password_hash = COALESCE(?, password_hash) WHERE name = ?",
            );
            let done = sqlx::query(&sql)
                .bind(i64::from(platform_admin))
                .bind(now)
                .bind(password_hash)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(ApiError::NotFound(format!("user {name:?} does not exist")));
            }
            self.keep_a_platform_admin(&mut tx).await?;
        }
        let sql = self.sql("DELETE FROM user_roles WHERE user_name = ?");
        sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        let mut missing = Vec::new();
        for (namespace, role) in roles {
            let sql = self.sql("SELECT id FROM namespaces WHERE id = ?");
            if sqlx::query(&sql)
                .bind(namespace)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                missing.push(model::validate::FieldError {
                    field: format!("roles.{namespace}"),
                    message: format!("namespace {namespace:?} does not exist"),
                });
                continue;
            }
            let sql =
                self.sql("INSERT INTO user_roles (user_name, namespace, role) VALUES (?, ?, ?)");
            sqlx::query(&sql)
                .bind(name)
                .bind(namespace)
                .bind(role.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if !missing.is_empty() {
            return Err(ApiError::Invalid {
                what: "user".into(),
                errors: model::validate::ValidationErrors(missing),
            });
        }
        tx.commit().await?;
        self.require_user(name).await
    }

    /// Refuses a change that leaves no platform admin.
    async fn keep_a_platform_admin(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), ApiError> {
        let sql = self.sql("SELECT COUNT(*) AS n FROM users WHERE platform_admin = 1");
        let n: i64 = sqlx::query(&sql).fetch_one(&mut **tx).await?.try_get("n")?;
        if n == 0 {
            return Err(ApiError::InUse {
                message: "the last platform admin cannot be removed or demoted".into(),
                details: Vec::new(),
            });
        }
        Ok(())
    }

    /// Deletes a user with its roles and tokens; never the last platform admin.
    pub(crate) async fn delete_user(&self, name: &str) -> Result<(), ApiError> {
        let mut tx = self.pool.begin().await?;
        let sql = self.sql("DELETE FROM users WHERE name = ?");
        let done = sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!("user {name:?} does not exist")));
        }
        self.keep_a_platform_admin(&mut tx).await?;
        for sql in [
            "DELETE FROM user_roles WHERE user_name = ?",
            "DELETE FROM api_tokens WHERE user_name = ?",
        ] {
            let sql = self.sql(sql);
            sqlx::query(&sql).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a new token (its hash) for `user`; returns its id.
    pub(crate) async fn insert_token(
        &self,
        user: &str,
        hash: &str,
        name: &str,
        kind: TokenKind,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<String, ApiError> {
        let id = format!("tok-{}", &crate::auth::generate_token()[..16]);
        let sql = self.sql(
            "INSERT INTO api_tokens (id, user_name, token_sha256, name, kind, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        sqlx::query(&sql)
            .bind(&id)
            .bind(user)
            .bind(hash)
            .bind(name)
            .bind(kind.as_str())
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        // Expired sessions go when new ones come.
        let sql = self.sql(
            "DELETE FROM api_tokens WHERE kind = 'session' AND expires_at IS NOT NULL AND expires_at <= ?",
        );
        sqlx::query(&sql).bind(now).execute(&self.pool).await?;
        Ok(id)
    }

    /// The user's API tokens (not its sessions).
    pub(crate) async fn tokens(&self, user: &str) -> Result<Vec<TokenInfo>, ApiError> {
        let sql = self.sql(
            "SELECT id, name, created_at, expires_at, last_used_at FROM api_tokens \
             WHERE user_name = ? AND kind = 'token' ORDER BY created_at, id",
        );
        let rows = sqlx::query(&sql).bind(user).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(TokenInfo {
                    id: text(row, "id")?,
                    name: text(row, "name")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ApiError::from)
    }

    /// Revokes one of the user's tokens (or sessions).
    pub(crate) async fn delete_token(&self, user: &str, id: &str) -> Result<(), ApiError> {
        let sql = self.sql("DELETE FROM api_tokens WHERE user_name = ? AND id = ?");
        let done = sqlx::query(&sql)
            .bind(user)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "user {user:?} has no token {id:?}"
            )));
        }
        Ok(())
    }
}

fn user_from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    let admin: i64 = row.try_get("platform_admin")?;
    Ok(User {
        name: text(row, "name")?,
        platform_admin: admin != 0,
        roles: BTreeMap::new(),
        has_password: optional_text(row, "password_hash")?.is_some(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
