//! Any UTF-8 text as geosteer.toml.
//!
//! Invariant: `Config::parse` never panics; errors are fine, and every error names the file
//! and a line inside the text (0 = the file as a whole).
//!
//! The base directory does not exist, so `token_file` and other paths cannot reach real files.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("f.toml");
    if let Err(errors) = geosteer::config::Config::parse(file, text, Path::new("/nonexistent")) {
        let lines = text.lines().count() + 1;
        for e in &errors.0 {
            assert_eq!(e.file, file, "{e}");
            assert!(
                e.line <= lines,
                "line {} of a {lines}-line text: {e}",
                e.line
            );
        }
    }
});
