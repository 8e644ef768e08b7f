//! The per-run admin token: what makes `geosteer force|drill|reload` work against a local
//! geosteer that has no token configured (the embedded default), without opening the API.
//!
//! When the admin API listens on loopback and no `[admin] token`/`token_file` is set, `serve`
//! makes a random token for this run, accepts it (and only it) for state-changing calls, and
//! writes it, readable by the same user only (mode 0600), to a file whose name the local CLI can
//! work out from the same configuration: `$XDG_RUNTIME_DIR/geosteer/<admin port>.token` when
//! `XDG_RUNTIME_DIR` is set (a per-user directory), else `geosteer-admin-<port>.token` beside
//! the state file. The file is removed at shutdown. Whoever can read it is the user who could
//! also read the state file and send signals to the process: no privilege is added.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where the token of the server whose admin API listens on `port` is kept.
pub fn path(port: u16, state_file: &Path) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("geosteer").join(format!("{port}.token")),
        _ => state_file
            .parent()
            .unwrap_or(Path::new(""))
            .join(format!("geosteer-admin-{port}.token")),
    }
}

/// Makes a token (128 random bits from the kernel, as hex) and writes it to [`path`] with mode
/// 0600, replacing a file a killed earlier run left behind. Blocking: call off the runtime.
pub fn create(port: u16, state_file: &Path) -> std::io::Result<(String, PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = path(port, state_file);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // Unlink first (a stale file, or a symlink planted to redirect the write: removing a
    // symlink never touches its target), then create exclusively, without following links.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    writeln!(f, "{token}")?;
    Ok((token, path))
}

/// The token of the local server whose admin API listens on `port`, if its file is there.
pub fn read(port: u16, state_file: &Path) -> Option<String> {
    let text = crate::base::file::read_regular_text(
        &path(port, state_file),
        crate::base::file::MAX_TOKEN_BYTES,
    )
    .ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_readable_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        // Beside the state file when XDG_RUNTIME_DIR is not used (the variable may be set in
        // the environment of the test run: compute the expected path the same way).
        let (t, p) = create(65000, &state).unwrap();
        assert_eq!(p, path(65000, &state));
        assert_eq!(t.len(), 32);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(65000, &state).as_deref(), Some(t.as_str()));
        // A second run replaces it.
        let (t2, _) = create(65000, &state).unwrap();
        assert_ne!(t, t2);
        assert_eq!(read(65000, &state).as_deref(), Some(t2.as_str()));
        std::fs::remove_file(&p).unwrap();
    }
}
