//! Any UTF-8 text as a traffic-profile file (`zones/<zone>.toml`) of a small fixed zone.
//!
//! Invariant: `load_profiles` never panics; errors are fine, and every error names the file
//! and a line inside the text (0 = the file as a whole). A file that loads yields profiles
//! whose nested references stay inside the table, and `compute_capabilities` does not panic.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use geosteer::geo::Catalogue;
use geosteer::routing::Target;
use geosteer::routing::profile::{compute_capabilities, load_profiles};
use geosteer::zone::{Zone, load_zone_text};
use libfuzzer_sys::fuzz_target;

/// A static name (www), a delegation (sub) and an empty non-terminal (a.b → b).
const ZONE: &str = "$ORIGIN example.test.
$TTL 60
@       IN SOA ns1 hostmaster 1 7200 900 1209600 300
@       IN NS  ns1
ns1     IN A   192.0.2.1
www     IN A   192.0.2.10
a.b     IN A   192.0.2.11
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.53
";

fn fixture() -> &'static (Zone, Catalogue) {
    static F: OnceLock<(Zone, Catalogue)> = OnceLock::new();
    F.get_or_init(|| {
        let zone = load_zone_text(Path::new("example.test.zone"), ZONE)
            .unwrap_or_else(|e| panic!("fixture zone: {e}"));
        let catalogue = Catalogue::load(None).unwrap_or_else(|e| panic!("catalogue: {e}"));
        (zone, catalogue)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (zone, catalogue) = fixture();
    let file = Path::new("f.toml");
    match load_profiles(zone, file, text, catalogue, 0) {
        Ok(mut profiles) => {
            let n = profiles.len();
            for p in &profiles {
                for e in &p.endpoints {
                    if let Target::Nested(i) = e.target {
                        assert!(i < n, "nested index {i} of {n} profiles");
                    }
                }
            }
            compute_capabilities(&mut profiles);
        }
        Err(errors) => {
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
    }
});
