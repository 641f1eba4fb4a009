//! The config file `login` writes and every command reads: which admin, and the
//! session token it gave (`$PORTICO_CONFIG`, else `~/.config/portico/ctl.json`;
//! created with mode 0600 in a 0700 directory, replaced whole, never printed).
//!
//! Flags and the environment override it: `--admin`/`PORTICO_ADMIN`,
//! `--token`/`PORTICO_TOKEN`. The stored token is only ever sent to the admin that
//! issued it: with another admin named, it is left out.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::error::{CtlError, Result};

/// What the file holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The admin's base URL as given to `login` (normalised, see [`admin_base`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The session token of the last login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Who logged in (shown by `whoami` when the admin cannot be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When the session ends (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Where the file is: `explicit` (the `--config` flag or `PORTICO_CONFIG`), else
/// `~/.config/portico/ctl.json`.
pub fn path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CtlError::Usage("HOME is not set: give the config file with PORTICO_CONFIG".into())
        })?;
    Ok(PathBuf::from(home).join(".config/portico/ctl.json"))
}

/// The file's content; a missing file is an empty config.
pub fn load(path: &Path) -> Result<Stored> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read {}", path.display()))
                .into())
        }
    };
    serde_json::from_slice(&text).map_err(|e| {
        CtlError::Input(format!(
            "{}:{}:{}: not a ctl config file: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Replaces the file with `stored`: written to a private temporary file beside it,
/// then renamed over it, so a reader never sees half a file and the token is never
/// readable by others, not even for a moment.
pub fn save(path: &Path, stored: &Stored) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ctl.json".to_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(stored).context("cannot encode the config")?;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The mode given at creation is masked by the umask; make it exactly 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(&text)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(anyhow::Error::new(e)
            .context(format!("cannot write {}", path.display()))
            .into());
    }
    Ok(())
}

/// The admin API's base URL from what a user typed: `http://host:9180`,
/// `http://host:9180/`, or the full `…/gateway/apiserver/v1`.
pub fn admin_base(given: &str) -> Result<String> {
    let trimmed = given.trim().trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix("/gateway/apiserver/v1")
        .unwrap_or(trimmed);
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| CtlError::Usage(format!("--admin {given:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CtlError::Usage(format!(
            "--admin {given:?} must be an http:// or https:// URL"
        )));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_normalised() {
        for given in [
            "http://127.0.0.1:9180",
            "http://127.0.0.1:9180/",
            "http://127.0.0.1:9180/gateway/apiserver/v1",
            " http://127.0.0.1:9180/gateway/apiserver/v1/ ",
        ] {
            assert_eq!(admin_base(given).unwrap(), "http://127.0.0.1:9180");
        }
        assert!(admin_base("127.0.0.1:9180").is_err());
        assert!(admin_base("ftp://host").is_err());
    }

    #[test]
    fn the_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ctl.json");
        assert!(load(&path).unwrap().token.is_none());
        let stored = Stored {
            admin: Some("http://a".into()),
            token: Some("t".into()),
            user: Some("u".into()),
            expires_at: Some(1),
        };
        save(&path, &stored).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(load(&path).unwrap().token.as_deref(), Some("t"));
        save(&path, &Stored::default()).unwrap();
        assert!(load(&path).unwrap().token.is_none());
    }
}
