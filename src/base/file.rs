//! Reading the files an operator points geosteer at — configuration, zones, profiles, the
//! region catalogue, token and state files, CA bundles — safely.
//!
//! A path can name something that is not a file: a FIFO (an `open` for reading blocks until a
//! writer appears, so a load would hang for ever while holding the reload lock), a device
//! (`/dev/zero` never ends: a config symlinked to it grew RSS to 3.7 GB in 5 s), a directory, a
//! socket. So every read here follows the path, opens it with `O_NONBLOCK` (a FIFO's open then
//! returns at once instead of waiting for a writer; the flag changes nothing for regular
//! files), checks on the *opened* descriptor that it is a regular file (no window between the
//! check and the read), and reads at most a size cap for that kind of file.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// Largest configuration file (and region catalogue): real ones are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest profile file: 10,000 endpoints take about 2 MiB.
pub const MAX_PROFILE_BYTES: u64 = 64 << 20;
/// Largest zone file (as much as all `$INCLUDE`d files of a zone together).
pub const MAX_ZONE_BYTES: u64 = 256 << 20;
/// Largest admin token file.
pub const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// Largest state file (forced states and at most 100 drill records).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// What a non-regular file is, in words.
fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Opens `path` (following symlinks) without blocking and returns it only if it is a regular
/// file. Errors are short phrases for messages: the OS error, or `not a regular file (a FIFO)`.
pub fn open_regular(path: &Path) -> Result<(File, Metadata), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", kind(&meta)));
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `max` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let (file, meta) = open_regular(path)?;
    let too_big = || format!("larger than {}: refusing to read it", human(max));
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // `take`: the file may grow between the check and the read.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> Result<String, String> {
    String::from_utf8(read_regular(path, max)?).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would block for ever without O_NONBLOCK (nobody opens the FIFO for writing).
        assert_eq!(
            read_regular(&fifo, 100).unwrap_err(),
            "not a regular file (a FIFO)"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 100).unwrap_err(),
            "not a regular file (a character device)"
        );
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(
            read_regular(&link, 100)
                .unwrap_err()
                .contains("character device")
        );
        assert!(
            read_regular(dir.path(), 100)
                .unwrap_err()
                .contains("directory")
        );
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(
            read_regular(&dangling, 100)
                .unwrap_err()
                .contains("No such file")
        );
    }

    #[test]
    fn size_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, vec![b'x'; 2048]).unwrap();
        assert_eq!(read_regular(&f, 2048).unwrap().len(), 2048);
        assert_eq!(
            read_regular(&f, 1024).unwrap_err(),
            "larger than 1 KiB: refusing to read it"
        );
        assert_eq!(read_regular_text(&f, 4096).unwrap().len(), 2048);
    }
}
