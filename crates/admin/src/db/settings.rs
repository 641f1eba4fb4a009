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
        let done = sqlx::query(&update)
            .bind(content)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let insert = self.sql("INSERT INTO settings (name, content) VALUES (?, ?)");
        match sqlx::query(&insert)
            .bind(name)
            .bind(content)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(()),
            // Another admin process inserted it between our two statements: update theirs.
            Err(e) if is_unique_violation(&e) => sqlx::query(&update)
                .bind(content)
                .bind(name)
                .execute(&self.pool)
                .await
                .map(drop),
            Err(e) => Err(e),
        }
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
