//! The state file: forced states and drill records that must survive a restart.
//!
//! Written atomically (temporary file + rename), so a crash mid-write leaves the old file. A
//! state file that cannot be parsed stops start-up with a message naming it: silently
//! forgetting that an operator forced a region down would be worse than not starting.

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
    /// Reads the file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ConfigError::new(path, e.line(), "-", format!("state file is not valid: {e}"))
                    .into()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
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

    /// Writes the file atomically (blocking: call from `spawn_blocking`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}
