//! The state file: forced states and drill records that must survive a restart.
//!
//! Written atomically (temporary file + rename), so a crash mid-write leaves the old file. A
//! state file that cannot be parsed stops start-up with a message naming it: silently
//! forgetting that an operator forced a region down would be worse than not starting.
//!
//! The temporary file (`<state file>.tmp`, e.g. `geosteer-state.json.tmp`) is never trusted:
//! whatever is at that name (a stale file from a crash, or a symlink someone planted to make
//! us overwrite its target) is unlinked — which removes a symlink itself, never its target —
//! and the file is then created exclusively (`O_CREAT|O_EXCL`, plus `O_NOFOLLOW`), so if
//! anything reappears at the name in between, the write fails instead of following it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::{ConfigError, ConfigErrors};
use crate::health::ForceEntry;

use super::drill::DrillRecord;

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    /// Forced states, including those drills own.
    #[serde(default)]
    pub forced: Vec<ForceEntry>,
    /// Drill records (newest last).
    #[serde(default)]
    pub drills: Vec<DrillRecord>,
}

/// Most drill records kept in the file.
const MAX_DRILLS: usize = 100;

impl Persisted {
    /// Reads the file; a missing file is an empty state. Only a regular file is read (a FIFO or
    /// device at the path is an error, not a hang).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        if let Err(e) = std::fs::metadata(path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Ok(Self::default());
        }
        match crate::base::file::read_regular_text(path, crate::base::file::MAX_STATE_BYTES) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ConfigError::new(path, e.line(), "-", format!("state file is not valid: {e}"))
                    .into()
            }),
            Err(e) => Err(ConfigError::file(path, format!("cannot read state file: {e}")).into()),
        }
    }

    /// Drops expired forced states and old drill records.
    pub fn prune(&mut self, now_unix: u64) {
        self.forced
            .retain(|f| f.force.until.is_none_or(|u| u > now_unix));
        let excess = self.drills.len().saturating_sub(MAX_DRILLS);
        self.drills.drain(..excess);
    }

    /// Writes the file atomically (blocking: call from `spawn_blocking`): a fresh temporary
    /// file beside it, flushed to disk, renamed over it.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp: PathBuf = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_temp_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geosteer-state.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("geosteer-state.json.tmp")).unwrap();
        Persisted::default().save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(Persisted::load(&path).unwrap().forced.is_empty());
        assert!(!dir.path().join("geosteer-state.json.tmp").exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/geosteer-state.json");
        assert!(Persisted::default().save(&path).is_err());
        assert!(Persisted::load(&path).unwrap().forced.is_empty());
    }
}
