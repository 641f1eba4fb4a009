//! Leases in the database (the `leases` table): taken when free, expired or already the
//! taker's; given up by their holder. `crate::lease` decides what they are for.

use std::time::Duration;

use sqlx::Row;

use super::{text, Db};
use crate::error::ApiError;

impl Db {
    /// Takes `name` for `holder` when it is free, expired or already its.
    pub(crate) async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<bool, ApiError> {
        let sql = self.sql(
            "UPDATE leases SET holder = ?, expires_at_ms = ? \
             WHERE name = ? AND (holder = ? OR expires_at_ms < ?)",
        );
        let done = sqlx::query(&sql)
            .bind(holder)
            .bind(now_ms + ttl.as_millis() as i64)
            .bind(name)
            .bind(holder)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives `name` up when `holder` has it.
    pub(crate) async fn release_lease(&self, name: &str, holder: &str) -> Result<(), ApiError> {
        let sql = self.sql("UPDATE leases SET expires_at_ms = 0 WHERE name = ? AND holder = ?");
        sqlx::query(&sql)
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds `name`, and until when (unix ms).
    pub(crate) async fn lease(&self, name: &str) -> Result<(String, i64), ApiError> {
        let sql = self.sql("SELECT holder, expires_at_ms FROM leases WHERE name = ?");
        let row = sqlx::query(&sql).bind(name).fetch_one(&self.pool).await?;
        Ok((text(&row, "holder")?, row.try_get("expires_at_ms")?))
    }
}
