//! Loading master files: hickory's RFC 1035 parser, then our own consistency checks.
//!
//! hickory's parser reports *what* is wrong but not *where*; an operator needs the line. We
//! find it by bisecting over prefixes of the file for the shortest that fails the same way
//! (only on the error path; O(log n) parses). Semantic errors (out-of-zone data, CNAME
//! beside other data, …) are located by the owner name's first line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::proto::serialize::txt::Parser;

use super::{Node, RrSet, Zone};
use crate::base::{ConfigError, ConfigErrors};
use crate::wire::{wire_is_subdomain, wire_lower};

/// Zone files are the `*.zone` files of the directory; other files (profiles, READMEs) are
/// left to their own loaders.
const ZONE_SUFFIX: &str = ".zone";

/// Loads every `*.zone` file of a directory. All errors of all files are returned together.
pub fn load_dir(dir: &Path) -> Result<Vec<Zone>, ConfigErrors> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::file(dir, format!("cannot read zones directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        // Every `*.zone` entry, whatever it is: one that is not a readable regular file (a
        // FIFO, a dangling symlink, a directory) is an error below rather than a zone that
        // silently stops being served.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(ZONE_SUFFIX) && n.len() > ZONE_SUFFIX.len())
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ConfigError::file(dir, "no *.zone files in zones directory").into());
    }
    let mut zones: Vec<Zone> = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text =
            match crate::base::file::read_regular_text(&path, crate::base::file::MAX_ZONE_BYTES) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::file(
                        &path,
                        format!("cannot read zone file: {e}"),
                    ));
                    continue;
                }
            };
        match load_zone_text(&path, &text) {
            Ok(zone) => {
                if let Some(other) = zones.iter().find(|z| z.origin_wire == zone.origin_wire) {
                    errors.push(ConfigError::new(
                        &path,
                        0,
                        "$ORIGIN",
                        format!(
                            "zone {} is already loaded from {}",
                            zone.origin,
                            other.file.display()
                        ),
                    ));
                } else {
                    zones.push(zone);
                }
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    if errors.is_empty() {
        Ok(zones)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Origin implied by the file name: `example.test.zone` → `example.test.`.
fn origin_from_path(path: &Path) -> Option<Name> {
    let stem = path.file_name()?.to_str()?.strip_suffix(ZONE_SUFFIX)?;
    let mut name = Name::from_ascii(stem).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Deepest `$INCLUDE` nesting accepted (hickory's own limit is 256, which a cycle reaches only
/// after reading the files 256 times).
const MAX_INCLUDE_DEPTH: usize = 8;
/// Most bytes all `$INCLUDE`d files of one zone may hold together.
const MAX_INCLUDE_BYTES: u64 = 256 << 20;

/// Checks every `$INCLUDE` of a zone file, recursively, before hickory's parser reads them:
/// each must name a readable regular file (hickory would read `/dev/zero` or a FIFO forever),
/// nesting is bounded and cycle-free, and the included files are bounded in size. Errors name
/// the including file and line, and the path as resolved.
///
/// Paths resolve as hickory resolves them: absolute as given, relative to the including file's
/// directory; a domain name after the file name is rejected by the parser itself.
fn check_includes(
    path: &Path,
    text: &str,
    chain: &mut Vec<PathBuf>,
    total: &mut u64,
) -> Result<(), ConfigError> {
    for (i, line) in text.lines().enumerate() {
        let mut tokens = line.split_whitespace();
        if !tokens
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("$INCLUDE"))
        {
            continue;
        }
        let err = |msg: String| ConfigError::new(path, i + 1, "$INCLUDE", msg);
        let Some(name) = tokens.next().map(|t| t.trim_matches('"')) else {
            return Err(err("no file name".into()));
        };
        let include = match Path::new(name) {
            p if p.is_absolute() => p.to_path_buf(),
            p => path.parent().unwrap_or(Path::new(".")).join(p),
        };
        let meta = std::fs::metadata(&include)
            .map_err(|e| err(format!("cannot read {}: {e}", include.display())))?;
        if !meta.is_file() {
            return Err(err(format!("{} is not a regular file", include.display())));
        }
        let canonical = include.canonicalize().unwrap_or_else(|_| include.clone());
        if chain.contains(&canonical) {
            let mut cycle: Vec<String> = chain
                .iter()
                .skip_while(|p| **p != canonical)
                .map(|p| p.display().to_string())
                .collect();
            cycle.push(canonical.display().to_string());
            return Err(err(format!("cycle: {}", cycle.join(" → "))));
        }
        if chain.len() >= MAX_INCLUDE_DEPTH {
            return Err(err(format!(
                "$INCLUDE nests deeper than {MAX_INCLUDE_DEPTH} levels"
            )));
        }
        *total += meta.len();
        if *total > MAX_INCLUDE_BYTES {
            return Err(err(format!(
                "included files exceed {} MiB in all",
                MAX_INCLUDE_BYTES >> 20
            )));
        }
        let inner =
            crate::base::file::read_regular_text(&include, crate::base::file::MAX_ZONE_BYTES)
                .map_err(|e| err(format!("cannot read {}: {e}", include.display())))?;
        chain.push(canonical);
        check_includes(&include, &inner, chain, total)?;
        chain.pop();
    }
    Ok(())
}

/// Parses and checks one zone file.
pub fn load_zone_text(path: &Path, text: &str) -> Result<Zone, ConfigErrors> {
    let top = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    check_includes(path, text, &mut vec![top], &mut 0)?;
    let origin_hint = origin_from_path(path);
    let parse = |t: &str| Parser::new(t, Some(path.to_path_buf()), origin_hint.clone()).parse();
    let (origin, sets) = match parse(text) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            let line = locate_parse_error(text, &msg, parse);
            // hickory says what is wrong but rarely quotes the value; the line itself does.
            let quoted = text
                .lines()
                .nth(line.wrapping_sub(1))
                .map(|l| l.split(';').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let short: String = l.chars().take(80).collect();
                    let more = if short.len() < l.len() { "…" } else { "" };
                    format!(" (in {:?})", format!("{short}{more}"))
                })
                .unwrap_or_default();
            return Err(ConfigError::new(path, line, "-", format!("syntax: {msg}{quoted}")).into());
        }
    };
    build_zone(path, text, origin, sets)
}

/// First line `n` such that the file's first `n` lines fail with the same message.
///
/// Binary search over prefixes: hickory's parser stops at the first error, so once a prefix
/// contains the faulty line every longer prefix fails the same way, and shorter ones either
/// parse or fail differently (cut mid-record). O(log n) parses instead of n, so even a
/// million-line file is located in about 20 parses.
fn locate_parse_error<F, T, E>(text: &str, msg: &str, parse: F) -> usize
where
    F: Fn(&str) -> Result<T, E>,
    E: std::fmt::Display,
{
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain((!text.ends_with('\n') && !text.is_empty()).then_some(text.len()))
        .collect();
    let fails_same =
        |n: usize| matches!(parse(&text[..ends[n - 1]]), Err(e) if e.to_string() == msg);
    // Invariant: the answer is in lo..=hi; `hi` (the whole file) fails with `msg`.
    let (mut lo, mut hi) = (1, ends.len());
    if hi == 0 {
        return 0;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails_same(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// Line of the first record line owned by `name` (absolute, or relative to the origin).
fn owner_line(text: &str, name: &Name, origin: &Name) -> usize {
    let is_owner = owner_matcher(name, origin);
    text.lines()
        .position(|l| {
            if l.starts_with(|c: char| c.is_whitespace() || c == ';' || c == '$') {
                return false;
            }
            is_owner(l.split_whitespace().next().unwrap_or(""))
        })
        .map_or(0, |i| i + 1)
}

/// Whether an owner token of the file names `name` (absolute, relative to the origin, or `@`).
fn owner_matcher(name: &Name, origin: &Name) -> impl Fn(&str) -> bool {
    let abs = name.to_ascii().to_ascii_lowercase();
    let abs_trim = abs.trim_end_matches('.').to_string();
    let origin_s = origin.to_ascii().to_ascii_lowercase();
    let rel = abs_trim
        .strip_suffix(origin_s.trim_end_matches('.'))
        .map(|r| r.trim_end_matches('.').to_string())
        .filter(|r| !r.is_empty());
    let at_apex = name.to_lowercase() == origin.to_lowercase();
    move |tok: &str| {
        let tok = tok.to_ascii_lowercase();
        tok == abs || tok == abs_trim || Some(&tok) == rel.as_ref() || (tok == "@" && at_apex)
    }
}

/// Line of the first record of type `rtype` owned by `name`, following the master-file rule
/// that a line starting with a blank continues the previous owner; [`owner_line`] when no line
/// is recognised (the type is looked for after the optional TTL and class, so a record split
/// over lines by parentheses is still found by its first line).
fn record_line(text: &str, name: &Name, origin: &Name, rtype: RecordType) -> usize {
    let is_owner = owner_matcher(name, origin);
    let mnemonic = rtype.to_string();
    let mut owned = false;
    for (i, line) in text.lines().enumerate() {
        let content = line.split(';').next().unwrap_or("");
        if content.trim().is_empty() || content.starts_with('$') {
            continue;
        }
        let mut tokens = content.split_whitespace();
        if !content.starts_with(char::is_whitespace) {
            owned = is_owner(tokens.next().unwrap_or(""));
        }
        if !owned {
            continue;
        }
        let rr_type = tokens.find(|t| {
            !t.starts_with(|c: char| c.is_ascii_digit())
                && !["IN", "CH", "HS", "CS"].contains(&t.to_ascii_uppercase().as_str())
        });
        if rr_type.is_some_and(|t| t.eq_ignore_ascii_case(&mnemonic)) {
            return i + 1;
        }
    }
    owner_line(text, name, origin)
}

/// Additional records computed for one RRset: (owner, index in the node, records).
type Glue = (Box<[u8]>, usize, Box<[Record]>);

fn build_zone(
    path: &Path,
    text: &str,
    origin: Name,
    sets: BTreeMap<RrKey, RecordSet>,
) -> Result<Zone, ConfigErrors> {
    let origin_wire = wire_lower(&origin);
    let mut errors = Vec::new();
    let err = |name: &Name, rtype: Option<RecordType>, msg: String| {
        let field = match rtype {
            Some(t) => format!("{name} {t}"),
            None => name.to_string(),
        };
        ConfigError::new(path, owner_line(text, name, &origin), field, msg)
    };

    // Sized once: growing a map of a million names doubles it several times, and each time
    // the old and the new table are alive together.
    let mut nodes: crate::base::FastMap<Box<[u8]>, Node> =
        crate::base::FastMap::with_capacity_and_hasher(sets.len(), Default::default());
    let mut soa = None;
    // The parser's map is consumed, not borrowed: its records move into ours (no clone) and
    // its nodes are freed as the iteration passes them, so the parsed zone is held about once
    // rather than twice (a hickory `Record` is 272 bytes).
    for (key, set) in sets {
        let rtype = key.record_type;
        drop(key);
        let parts = set.into_parts();
        let name = &parts.name;
        let wire = wire_lower(name);
        if !wire_is_subdomain(&wire, &origin_wire) {
            errors.push(err(
                name,
                Some(rtype),
                format!("out of zone: not at or below the origin {origin}"),
            ));
            continue;
        }
        // RFC 4592: only a leftmost `*` makes a wildcard; elsewhere it would be a literal label
        // that nobody means and every reader misreads, so it is refused.
        if name.iter().skip(1).any(|l| l == b"*") {
            errors.push(err(
                name,
                Some(rtype),
                "`*` is only allowed as the first label (a wildcard, RFC 4592)".to_string(),
            ));
            continue;
        }
        // A wildcard is a source of synthesis, never a zone's apex data or a delegation: NS at
        // `*.x` would make every missing name below `x` a zone cut (RFC 4592 §4.2), an SOA
        // there an apex.
        if name.is_wildcard() && matches!(rtype, RecordType::SOA | RecordType::NS) {
            errors.push(ConfigError::new(
                path,
                record_line(text, name, &origin, rtype),
                format!("{name} {rtype}"),
                format!("{rtype} at a wildcard owner: wildcards cannot own SOA or NS"),
            ));
            continue;
        }
        if parts.dns_class != DNSClass::IN {
            errors.push(err(
                name,
                Some(rtype),
                format!("class {} is not served; only IN", parts.dns_class),
            ));
            continue;
        }
        // RRSIGs (kept apart by the parser) are not served; `into_boxed_slice` drops spare
        // capacity (the parser's `Vec` grows to four records at its second).
        let records: Box<[Record]> = parts.records.into_boxed_slice();
        if rtype == RecordType::SOA {
            if wire != origin_wire {
                errors.push(err(
                    name,
                    Some(rtype),
                    "SOA below the zone apex".to_string(),
                ));
                continue;
            }
            if records.len() != 1 {
                errors.push(err(
                    name,
                    Some(rtype),
                    "more than one SOA record".to_string(),
                ));
                continue;
            }
            soa = records.first().cloned();
        }
        if rtype == RecordType::CNAME && records.len() > 1 {
            errors.push(err(
                name,
                Some(rtype),
                "more than one CNAME at one name".to_string(),
            ));
            continue;
        }
        let cname_target = match records.first().map(|r| &r.data) {
            Some(RData::CNAME(c)) => Some(wire_lower(&c.0)),
            _ => None,
        };
        let cut = rtype == RecordType::NS && wire != origin_wire;
        let node = nodes.entry(wire).or_default();
        node.rrsets.push(RrSet {
            rtype,
            records,
            additional: Box::default(),
            cname_target,
        });
        node.cut |= cut;
    }
    for node in nodes.values_mut() {
        node.rrsets.shrink_to_fit();
    }

    // CNAME and other data cannot share a name (RFC 1034 §3.6.2); nor can the apex be a CNAME.
    for node in nodes.values() {
        if let Some(c) = node.get(RecordType::CNAME) {
            let name = &c.records[0].name;
            if node.rrsets.len() > 1 {
                errors.push(err(
                    name,
                    Some(RecordType::CNAME),
                    "CNAME and other data at the same name".to_string(),
                ));
            } else if wire_lower(name) == origin_wire {
                errors.push(err(
                    name,
                    Some(RecordType::CNAME),
                    "CNAME at the zone apex".to_string(),
                ));
            }
        }
    }

    let Some(soa) = soa else {
        errors.push(ConfigError::new(
            path,
            0,
            "SOA",
            format!("zone {origin} has no SOA record"),
        ));
        return Err(ConfigErrors(errors));
    };
    let apex_has_ns = nodes
        .get(&origin_wire)
        .is_some_and(|n| n.get(RecordType::NS).is_some());
    if !apex_has_ns {
        errors.push(err(
            &origin,
            Some(RecordType::NS),
            format!("zone {origin} has no NS records at its apex"),
        ));
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    // Empty non-terminals: every ancestor between an owner and the apex exists (NODATA).
    // Only the missing ancestors are collected (not a copy of every owner name); an ancestor
    // that exists has its own ancestors checked when it is visited as an owner.
    let mut missing: Vec<Box<[u8]>> = Vec::new();
    for owner in nodes.keys() {
        let mut off = 0;
        while off < owner.len() && owner[off] != 0 {
            off += 1 + owner[off] as usize;
            let ancestor = &owner[off..];
            if ancestor.len() <= origin_wire.len() || nodes.contains_key(ancestor) {
                break;
            }
            missing.push(ancestor.into());
        }
    }
    for ancestor in missing {
        nodes.entry(ancestor).or_default();
    }

    // Additional-section addresses for NS, MX and SRV targets that live in this zone.
    let mut glue: Vec<Glue> = Vec::new();
    for (owner, node) in &nodes {
        for (idx, set) in node.rrsets.iter().enumerate() {
            let extra: Box<[Record]> = set
                .records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(ns) => Some(wire_lower(&ns.0)),
                    RData::MX(mx) => Some(wire_lower(&mx.exchange)),
                    RData::SRV(srv) => Some(wire_lower(&srv.target)),
                    _ => None,
                })
                .filter_map(|t| nodes.get(&t))
                .flat_map(|target| {
                    [RecordType::A, RecordType::AAAA]
                        .into_iter()
                        .filter_map(|t| target.get(t))
                        .flat_map(|set| set.records.iter().cloned())
                })
                .collect();
            if !extra.is_empty() {
                glue.push((owner.clone(), idx, extra));
            }
        }
    }
    for (owner, idx, extra) in glue {
        if let Some(n) = nodes.get_mut(&owner) {
            n.rrsets[idx].additional = extra;
        }
    }

    let negative_ttl = match &soa.data {
        RData::SOA(s) => soa.ttl.min(s.minimum),
        _ => soa.ttl,
    };
    let mut negative_soa = soa.clone();
    negative_soa.ttl = negative_ttl;
    let has_cuts = nodes.values().any(|n| n.cut);
    let has_wildcards = nodes.keys().any(|k| k.starts_with(b"\x01*"));
    let wildcard_parents: Box<[Box<[u8]>]> = nodes
        .keys()
        .filter(|k| k.starts_with(b"\x01*"))
        .map(|k| Box::<[u8]>::from(&k[2..]))
        .collect();
    let negative_soa_wire = crate::wire::ApexRr::soa(&negative_soa, &origin_wire);
    Ok(Zone {
        negative_soa_wire,
        origin_labels: usize::from(origin.num_labels()),
        origin,
        origin_wire,
        soa,
        negative_soa,
        nodes,
        has_cuts,
        has_wildcards,
        wildcard_parents,
        file: path.to_path_buf(),
        queries: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "$ORIGIN t.\n$TTL 60\n@ IN SOA ns. h. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n";

    fn load(text: &str) -> Result<Zone, ConfigErrors> {
        load_zone_text(Path::new("zones/t.zone"), text)
    }

    #[test]
    fn negative_ttl_is_min_of_soa_ttl_and_minimum() {
        let z = load(GOOD).unwrap();
        assert_eq!(z.negative_soa.ttl, 30);
        assert_eq!(z.soa.ttl, 60);
    }

    #[test]
    fn syntax_error_names_the_line() {
        let text = format!("{GOOD}www IN A 999.1.1.1\nok IN A 192.0.2.2\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.starts_with("zones/t.zone:6: -: syntax:"), "{e}");
    }

    #[test]
    fn syntax_errors_are_located_in_large_files_and_at_the_edges() {
        // 25,000 records, the bad one at line 24,444 (the old linear search gave up
        // beyond 20,000 lines and reported the file only).
        let mut text = GOOD.to_string();
        let bad = 24_444;
        for line in 6..=25_000 {
            if line == bad {
                text.push_str("bad IN A 999.1.1.1\n");
            } else {
                text.push_str(&format!("h{line} IN A 192.0.2.{}\n", line % 250 + 1));
            }
        }
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("zones/t.zone:{bad}: -: syntax:")),
            "{e}"
        );
        // Last line without a newline, and an unclosed parenthesis found only at the end.
        let e = load(&format!("{GOOD}www IN A 999.1.1.1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("zones/t.zone:6: -: syntax:"), "{e}");
        let e = load(&format!("{GOOD}x IN TXT ( \"a\"\n\"b\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("zones/t.zone:6: -: syntax:"), "{e}");
    }

    #[test]
    fn includes_must_be_regular_files_without_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("t.zone");
        let text = format!("{GOOD}$INCLUDE hosts.inc\n");
        // Missing.
        let e = load_zone_text(&zone, &text).unwrap_err().to_string();
        assert!(e.contains("t.zone:6: $INCLUDE: cannot read "), "{e}");
        // Present: its records are part of the zone.
        std::fs::write(dir.path().join("hosts.inc"), "www IN A 192.0.2.8\n").unwrap();
        let z = load_zone_text(&zone, &text).unwrap();
        assert!(
            z.nodes
                .contains_key(&wire_lower(&Name::from_ascii("www.t.").unwrap()))
        );
        // A directory, a device, a self-include.
        for (target, want) in [
            ("/", "/ is not a regular file"),
            ("/dev/null", "/dev/null is not a regular file"),
            ("t.zone", "cycle: "),
        ] {
            let text = format!("{GOOD}$INCLUDE {target}\n");
            std::fs::write(&zone, &text).unwrap();
            let e = load_zone_text(&zone, &text).unwrap_err().to_string();
            assert!(e.contains(want), "{target}: {e}");
        }
        // Nesting deeper than MAX_INCLUDE_DEPTH: a chain of files each including the next.
        for i in 0..=MAX_INCLUDE_DEPTH {
            std::fs::write(
                dir.path().join(format!("{i}.inc")),
                format!("$INCLUDE {}.inc\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join(format!("{}.inc", MAX_INCLUDE_DEPTH + 1)),
            "",
        )
        .unwrap();
        let e = load_zone_text(&zone, &format!("{GOOD}$INCLUDE 0.inc\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nests deeper than 8 levels"), "{e}");
    }

    #[test]
    fn out_of_zone_record_is_named() {
        let text = format!("{GOOD}other.example. IN A 192.0.2.9\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.contains("zones/t.zone:6: other.example. A: out of zone"),
            "{e}"
        );
    }

    #[test]
    fn cname_and_other_data_rejected() {
        let text = format!("{GOOD}x IN CNAME ns.t.\nx IN A 192.0.2.3\n");
        let e = load(&text).unwrap_err().to_string();
        assert!(
            e.contains("zones/t.zone:6: x.t. CNAME: CNAME and other data"),
            "{e}"
        );
    }

    #[test]
    fn missing_ns_rejected() {
        let e = load("$ORIGIN t.\n@ 60 IN SOA ns. h. 1 2 3 4 30\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no NS records"), "{e}");
    }

    #[test]
    fn empty_non_terminals_exist() {
        let z = load(&format!("{GOOD}a.b.c IN A 192.0.2.4\n")).unwrap();
        let b = wire_lower(&Name::from_ascii("b.c.t.").unwrap());
        let c = wire_lower(&Name::from_ascii("c.t.").unwrap());
        assert!(z.nodes.get(&b).is_some_and(|n| n.rrsets.is_empty()));
        assert!(z.nodes.contains_key(&c));
    }

    #[test]
    fn wildcards_load_but_not_with_soa_or_ns_nor_a_star_inside() {
        let z = load(&format!("{GOOD}*.w IN A 192.0.2.5\n* IN TXT \"any\"\n")).unwrap();
        assert!(z.has_wildcards);
        assert!(!load(GOOD).unwrap().has_wildcards);
        // The wildcard's parent is an empty non-terminal (a closest encloser).
        let w = wire_lower(&Name::from_ascii("w.t.").unwrap());
        assert!(z.nodes.get(&w).is_some_and(|n| n.rrsets.is_empty()));
        for (extra, want) in [
            (
                "x IN A 192.0.2.5\n* IN NS ns.t.\n",
                "zones/t.zone:7: *.t. NS: NS at a wildcard owner",
            ),
            // A continuation line is found as the record's line, not the owner's first.
            (
                "*.w IN A 192.0.2.5\n    IN NS ns.t.\n",
                "zones/t.zone:7: *.w.t. NS: NS at a wildcard owner",
            ),
            (
                "* 60 IN SOA ns. h. 1 2 3 4 30\n",
                "zones/t.zone:6: *.t. SOA: SOA at a wildcard owner",
            ),
            (
                "a.*.w IN A 192.0.2.5\n",
                "zones/t.zone:6: a.*.w.t. A: `*` is only allowed as the first label",
            ),
            (
                "*.*.w IN A 192.0.2.5\n",
                "zones/t.zone:6: *.*.w.t. A: `*` is only allowed as the first label",
            ),
        ] {
            let e = load(&format!("{GOOD}{extra}")).unwrap_err().to_string();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn ns_glue_is_precomputed() {
        let z = load(GOOD).unwrap();
        let ns = z.nodes[&z.origin_wire].get(RecordType::NS).unwrap();
        assert_eq!(ns.additional.len(), 1);
    }
}
