//! The node's local copy of its last good config, so it can start serving while the
//! store is unreachable (cold-start resilience).
//!
//! After config from the store is applied the node writes every config key it holds
//! (at most once a second, and once more on shutdown) to one JSON file: written to a
//! temporary file in the same directory, flushed to disk and renamed over the old one,
//! so a crash leaves either the old or the new file, never half of one. The file holds
//! certificate keys, so it is created readable by its owner only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use store::KeyValue;

/// What the file holds; borrowing the node's keys when saved, owning them when loaded.
#[derive(Debug, Serialize, Deserialize)]
struct Stored<'a> {
    instance: Cow<'a, str>,
    /// The admin revision of the content.
    revision: u64,
    /// Unix milliseconds of the save.
    saved_at_ms: i64,
    /// Store key → value (each value is the JSON text the store held).
    keys: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

/// A loaded snapshot.
#[derive(Debug)]
pub struct Loaded {
    pub revision: u64,
    pub saved_at_ms: i64,
    pub kvs: Vec<KeyValue>,
}

/// The snapshot file of one node.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the snapshot; `Ok(None)` when there is none. A snapshot of another
    /// instance is refused: serving it would route another business line's traffic.
    pub fn load(&self, instance: &str) -> anyhow::Result<Option<Loaded>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", self.path.display())),
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a snapshot: {e}", self.path.display()))?;
        anyhow::ensure!(
            stored.instance == instance,
            "{} holds instance {:?}, not {instance:?}",
            self.path.display(),
            stored.instance
        );
        Ok(Some(Loaded {
            revision: stored.revision,
            saved_at_ms: stored.saved_at_ms,
            kvs: stored
                .keys
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.into_owned(),
                    value: value.into_owned().into_bytes(),
                    mod_revision: 0,
                    lease: None,
                })
                .collect(),
        }))
    }

    /// Replaces the snapshot atomically with `keys` (key → value bytes).
    pub fn save<'a>(
        &self,
        instance: &str,
        revision: u64,
        keys: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> anyhow::Result<()> {
        // Serialised whole in memory and written with one call: the file is a few MiB
        // at 10k routes, and serde's small writes straight to the file were thousands
        // of system calls per save.
        let stored = Stored {
            instance: Cow::Borrowed(instance),
            revision,
            saved_at_ms: crate::now_ms(),
            keys: keys
                .map(|(k, v)| (Cow::Borrowed(k), String::from_utf8_lossy(v)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&stored)?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create a file in {}: {e}", dir.display()))?;
        // NamedTempFile creates files readable by the owner only (0600 on Unix).
        tmp.write_all(&bytes)?;
        tmp.flush()?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path)
            .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically_for_its_instance_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = SnapshotFile::new(dir.path().join("snap.json"));
        assert!(file.load("i").unwrap().is_none());

        let keys = [
            ("/p/i/routes/r", &b"{\"id\":\"r\"}"[..]),
            ("/p/i/meta", b"{}"),
        ];
        file.save("i", 7, keys.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        let loaded = file.load("i").unwrap().unwrap();
        assert_eq!(loaded.revision, 7);
        assert!(loaded.saved_at_ms > 0);
        let mut got: Vec<(String, Vec<u8>)> = loaded
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("/p/i/meta".to_owned(), b"{}".to_vec()),
                ("/p/i/routes/r".to_owned(), b"{\"id\":\"r\"}".to_vec()),
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }

        // Another instance's snapshot is refused; so is a file that is not one.
        assert!(file.load("other").is_err());
        std::fs::write(file.path(), "garbage").unwrap();
        assert!(file.load("i").is_err());
        // Only the snapshot itself is left in the directory: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
