//! Admin-wide settings (name → text), such as the admin token's hash.

use super::{is_unique_violation, text, Db};

impl Db {
    pub(crate) async fn setting(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        let sql = self.sql("SELECT content FROM settings WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| text(&r, "content")).transpose()
    }

    /// Stores `content` under `name`, replacing what was there.
    pub(crate) async fn put_setting(&self, name: &str, content: &str) -> Result<(), sqlx::Error> {
        let update = self.sql("UPDATE settings SET content = ? WHERE name = ?");
        let run_update = || {
            sqlx::query(&update)
                .bind(content)
                .bind(name)
                .execute(&self.pool)
        };
        if run_update().await?.rows_affected() > 0 || self.insert_setting(name, content).await? {
            return Ok(());
        }
        // Another admin process inserted it between our two statements: update theirs.
        run_update().await.map(drop)
    }

    /// Stores `content` under `name` only if nothing is there; false when something was.
    pub(crate) async fn insert_setting(
        &self,
        name: &str,
        content: &str,
    ) -> Result<bool, sqlx::Error> {
        let insert = self.sql("INSERT INTO settings (name, content) VALUES (?, ?)");
        match sqlx::query(&insert)
            .bind(name)
            .bind(content)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
