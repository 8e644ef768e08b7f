//! Any UTF-8 text as a zone file (`fuzz.zone`, so the origin defaults to `fuzz.`).
//!
//! Invariant: `load_zone_text` never panics; errors are fine, and every error names the file
//! and a line inside the text (or 0 for the file as a whole).
//!
//! `$INCLUDE` is left out: it reads other files relative to the working directory (device
//! files such as /dev/zero or /dev/stdin would block or exhaust memory — see fuzz/README.md),
//! which is not what a zone-text fuzzer is for.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.to_ascii_lowercase().contains("$include") {
        return;
    }
    let path = Path::new("fuzz.zone");
    if let Err(errors) = geosteer::zone::load_zone_text(path, text) {
        let lines = text.lines().count() + 1;
        for e in &errors.0 {
            assert_eq!(e.file, path, "{e}");
            assert!(
                e.line <= lines,
                "line {} of a {lines}-line text: {e}",
                e.line
            );
        }
    }
});
