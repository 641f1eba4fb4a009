//! The admin's database: the desired state of every instance.
//!
//! One code path serves SQLite, PostgreSQL and MySQL/MariaDB through sqlx's `Any` driver.
//! Queries are written once with `?` placeholders in portable SQL; [`Db::sql`] rewrites
//! them to `$1, $2, …` for PostgreSQL. Upserts are "UPDATE, then INSERT when no row
//! matched" because the three databases spell `ON CONFLICT` differently. Every write
//! transaction starts with a write, so SQLite takes its write lock up front instead of
//! failing to upgrade a read lock.

mod audit;
mod clusters;
mod convergence;
mod leases;
mod namespaces;
mod nodes;
mod resources;
mod revisions;
mod sealing;
mod settings;
mod users;
mod working;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::error::ApiError;
use crate::secrets::{Keyring, SecretError};

pub(crate) use audit::{AuditEntry, AuditFilter};
pub(crate) use clusters::{AgentRecord, InstanceReport, KubernetesExtras};
pub(crate) use convergence::{ConvergenceInputs, NodeReport, NodeSpan, RevisionCommit};
pub(crate) use nodes::GoneNode;
pub(crate) use resources::{Batch, Change, ChangeEntry, Committed, RevisionNote};
pub(crate) use revisions::{RevisionEntry, MAX_LISTED};
pub(crate) use users::{TokenInfo, TokenKind};

/// Migrations embedded at compile time from `crates/admin/migrations`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database the URL names; decides placeholders and connection set-up only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    fn from_url(url: &str) -> anyhow::Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            _ => anyhow::bail!(
                "unsupported database URL scheme {scheme:?}: use sqlite://FILE, postgres://… or mysql://…"
            ),
        }
    }
}

/// The connection pool, the dialect its SQL is rewritten for, and the keys secrets are
/// sealed with (certificate keys and agent tokens never reach a row in clear).
pub(crate) struct Db {
    pool: AnyPool,
    dialect: Dialect,
    keyring: Keyring,
}

impl Db {
    /// The data keys secrets are sealed with.
    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Connects and runs the migrations. SQLite files are created when missing and use
    /// WAL, so readers never wait for the writer.
    pub(crate) async fn open(url: &str, keyring: Keyring) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let (url, options) = match dialect {
            Dialect::Sqlite => (
                sqlite_url(url),
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            Ok(())
                        })
                    }),
            ),
            Dialect::Postgres | Dialect::MySql => {
                (url.to_owned(), AnyPoolOptions::new().max_connections(8))
            }
        };
        let pool = options
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .with_context(|| format!("cannot connect to the {dialect:?} database"))?;
        MIGRATOR
            .run(&pool)
            .await
            .context("cannot run the database migrations")?;
        Ok(Self {
            pool,
            dialect,
            keyring,
        })
    }

    /// Waits for the connections to finish and closes them.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Rewrites `?` placeholders for the connected database.
    fn sql(&self, sql: impl Into<Cow<'static, str>>) -> Cow<'static, str> {
        let sql = sql.into();
        match self.dialect {
            Dialect::Postgres => Cow::Owned(numbered_placeholders(&sql)),
            Dialect::Sqlite | Dialect::MySql => sql,
        }
    }
}

/// `?` → `$1, $2, …`. Our SQL never has `?` inside a string literal.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// `sqlite://portico.db` opens read-write only; add `mode=rwc` so a missing file is
/// created, unless the URL already chooses a mode.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Reads a string column. MySQL reports TEXT columns as BLOBs through the `Any` driver,
/// so bytes are accepted too (they are always UTF-8: we only store Rust strings).
fn text(row: &AnyRow, column: &str) -> Result<String, sqlx::Error> {
    match row.try_get::<String, _>(column) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(column)?;
            String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }
    }
}

fn optional_text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(s) => Ok(s),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(column)?;
            bytes
                .map(String::from_utf8)
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        }
    }
}

/// The row a certificate's key is sealed for.
fn certificate_context(cluster: &str, instance: &str, id: &str) -> String {
    format!("certificate/{cluster}/{instance}/{id}")
}

/// The credential a consumer's secret (a JWT HS* secret) is sealed for.
fn consumer_secret_context(cluster: &str, instance: &str, consumer: &str, id: &str) -> String {
    format!("consumer/{cluster}/{instance}/{consumer}/{id}")
}

/// The row a cluster's agent token is sealed for.
fn token_context(cluster: &str) -> String {
    format!("agent_token/{cluster}")
}

/// The sealing context of a cluster's kubeconfig.
fn kubeconfig_context(cluster: &str) -> String {
    format!("kubeconfig/{cluster}")
}

/// A secret that cannot be sealed for lack of a key: 503 naming the field and the flag;
/// any other failure is a stored value that does not open: 500, logged.
fn secret_error(field: &str, what: &str, e: SecretError) -> ApiError {
    match e {
        SecretError::NoKey => ApiError::NoDataKey {
            field: field.to_owned(),
        },
        other => ApiError::Internal(anyhow::anyhow!("{what}: {other}")),
    }
}

/// True when `e` is a primary-key or unique violation (a concurrent insert won).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered_placeholders("UPDATE t SET a = ? WHERE b = ? AND c = ?"),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            sqlite_url("sqlite://portico.db"),
            "sqlite://portico.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:///tmp/a.db?cache=shared"),
            "sqlite:///tmp/a.db?cache=shared&mode=rwc"
        );
        assert_eq!(sqlite_url("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        for (url, dialect) in [
            ("sqlite://portico.db", Dialect::Sqlite),
            ("postgres://u@h/db", Dialect::Postgres),
            ("postgresql://u@h/db", Dialect::Postgres),
            ("mysql://root@h/db", Dialect::MySql),
        ] {
            assert_eq!(Dialect::from_url(url).unwrap(), dialect, "{url}");
        }
        assert!(Dialect::from_url("oracle://x").is_err());
    }
}
