//! `geosteer-mkgeo` -- compile `geo/sample-networks.csv` into sample MaxMind DB
//! files (`geo/sample-city.mmdb`, `geo/sample-asn.mmdb`).
//!
//! The MaxMind DB (MMDB) format v2 is written by hand following
//! <https://maxmind.github.io/MaxMind-DB/>:
//!
//! * IPv6 binary search tree (`ip_version` 6), 24-bit records. IPv4 networks
//!   live in the IPv4-compatible subtree `::a.b.c.d/(96+len)`; the IPv4-mapped
//!   range `::ffff:0:0/96` is an *alias* pointing at that same subtree, so
//!   `::ffff:81.2.69.1` resolves like `81.2.69.1`.
//! * Data section with deduplication: identical records are stored once, and
//!   repeated keys / strings / sub-maps are replaced by pointers whenever the
//!   pointer is shorter than the inline encoding.
//! * 16 zero bytes between tree and data, then `\xAB\xCD\xEFMaxMind.com` and
//!   the metadata map.
//!
//! Output is byte-for-byte reproducible: `build_epoch` is the fixed
//! [`BUILD_EPOCH`], records are ordered by network, and no hash-map iteration
//! order leaks into the file. `--check` regenerates in memory and compares
//! with the files on disk (exit status 1 when they differ).
//!
//! Networks in the CSV must not overlap; an overlap is an error naming both
//! CSV lines (there is no "more specific wins" rule, so what you read in the
//! CSV is exactly what a lookup returns).
//!
//! Exit status: 0 success / up to date, 1 `--check` found a difference,
//! 2 any error (bad CSV, I/O, self-verification failure).
//!
//! A workspace member of its own (`tools/mkgeo`), not a binary of the server
//! crate: `cargo run -p geosteer-mkgeo` from the repository root (the default
//! `--input`/`--out-dir` are relative to the current directory).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// File name of the generated City database inside `--out-dir`.
pub const CITY_FILE: &str = "sample-city.mmdb";
/// File name of the generated ASN database inside `--out-dir`.
pub const ASN_FILE: &str = "sample-asn.mmdb";

/// Fixed build timestamp (2026-01-01T00:00:00Z) so output is reproducible.
/// Bump deliberately when the sample data changes meaningfully.
const BUILD_EPOCH: u64 = 1_767_225_600;

/// Search tree record size in bits (6 bytes per node).
const RECORD_SIZE: u16 = 24;
const MAX_RECORD_VALUE: usize = (1 << RECORD_SIZE) - 1;

const DATA_SECTION_SEPARATOR: [u8; 16] = [0; 16];
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// Expected CSV header (first non-comment, non-blank line).
const CSV_HEADER: &str = "network,country,continent,subdivision,city,lat,lon,asn,as_org";
const CSV_FIELDS: usize = 9;

// MMDB data types.
const T_POINTER: u8 = 1;
const T_STRING: u8 = 2;
const T_DOUBLE: u8 = 3;
const T_UINT16: u8 = 5;
const T_UINT32: u8 = 6;
const T_MAP: u8 = 7;
const T_UINT64: u8 = 9;
const T_ARRAY: u8 = 11;

/// Continent codes accepted in the CSV (GeoNames / MaxMind) and their names.
const CONTINENTS: &[(&str, &str)] = &[
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

/// ISO 3166-1 alpha-2 codes accepted in the CSV, with English names (written
/// to `country.names.en`). Not exhaustive: add a line when the sample data
/// needs a new country. Unknown codes are rejected to catch typos such as
/// `UK` (the ISO code is `GB`).
const COUNTRIES: &[(&str, &str)] = &[
    ("AE", "United Arab Emirates"),
    ("AR", "Argentina"),
    ("AT", "Austria"),
    ("AU", "Australia"),
    ("BD", "Bangladesh"),
    ("BE", "Belgium"),
    ("BG", "Bulgaria"),
    ("BH", "Bahrain"),
    ("BR", "Brazil"),
    ("CA", "Canada"),
    ("CH", "Switzerland"),
    ("CL", "Chile"),
    ("CN", "China"),
    ("CO", "Colombia"),
    ("CZ", "Czechia"),
    ("DE", "Germany"),
    ("DK", "Denmark"),
    ("EE", "Estonia"),
    ("EG", "Egypt"),
    ("ES", "Spain"),
    ("FI", "Finland"),
    ("FR", "France"),
    ("GB", "United Kingdom"),
    ("GR", "Greece"),
    ("HK", "Hong Kong"),
    ("HR", "Croatia"),
    ("HU", "Hungary"),
    ("ID", "Indonesia"),
    ("IE", "Ireland"),
    ("IL", "Israel"),
    ("IN", "India"),
    ("IS", "Iceland"),
    ("IT", "Italy"),
    ("JP", "Japan"),
    ("KE", "Kenya"),
    ("KR", "South Korea"),
    ("LT", "Lithuania"),
    ("LU", "Luxembourg"),
    ("LV", "Latvia"),
    ("MA", "Morocco"),
    ("MX", "Mexico"),
    ("MY", "Malaysia"),
    ("NG", "Nigeria"),
    ("NL", "Netherlands"),
    ("NO", "Norway"),
    ("NZ", "New Zealand"),
    ("PE", "Peru"),
    ("PH", "Philippines"),
    ("PK", "Pakistan"),
    ("PL", "Poland"),
    ("PT", "Portugal"),
    ("QA", "Qatar"),
    ("RO", "Romania"),
    ("RS", "Serbia"),
    ("RU", "Russia"),
    ("SA", "Saudi Arabia"),
    ("SE", "Sweden"),
    ("SG", "Singapore"),
    ("SI", "Slovenia"),
    ("SK", "Slovakia"),
    ("TH", "Thailand"),
    ("TR", "Turkey"),
    ("TW", "Taiwan"),
    ("UA", "Ukraine"),
    ("US", "United States"),
    ("VN", "Vietnam"),
    ("ZA", "South Africa"),
];

/// Write to a temporary sibling file and rename, so a server hot-reloading
/// the database never sees a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

// ---------------------------------------------------------------------------
// Generation pipeline
// ---------------------------------------------------------------------------

/// Both databases, built and self-verified in memory.
#[derive(Debug)]
pub struct Generated {
    /// The city database (`sample-city.mmdb`).
    pub city: Vec<u8>,
    /// The ASN database (`sample-asn.mmdb`).
    pub asn: Vec<u8>,
    /// What was generated, for the summary line.
    pub stats: Stats,
}

/// Counts printed after a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub networks: usize,
    pub ipv4: usize,
    pub ipv6: usize,
    pub city_nodes: usize,
    pub city_records: usize,
    pub asn_networks: usize,
    pub asn_nodes: usize,
}

/// Parse the CSV text and build both databases, then self-verify them with
/// the `maxminddb` reader. `source` is only used in error messages.
pub fn generate(text: &str, source: &str) -> Result<Generated> {
    let mut rows = parse_csv(text).with_context(|| format!("parsing {source}"))?;
    // Canonical order: output must not depend on the order of CSV lines.
    rows.sort_by_key(|r| (r.net.key, r.net.tree_len));

    let city_entries: Vec<Entry> = rows
        .iter()
        .map(|r| Entry {
            net: r.net.clone(),
            line: r.line,
            value: city_record(r),
        })
        .collect();
    let asn_entries: Vec<Entry> = rows
        .iter()
        .filter_map(|r| {
            r.asn.as_ref().map(|(number, org)| Entry {
                net: r.net.clone(),
                line: r.line,
                value: asn_record(*number, org),
            })
        })
        .collect();

    let city = build_database(
        &city_entries,
        "GeoLite2-City",
        "geosteer SAMPLE city database compiled from geo/sample-networks.csv by \
         geosteer-mkgeo. Illustrative test data, NOT accurate GeoIP data.",
    )
    .with_context(|| format!("building {CITY_FILE} from {source}"))?;
    let asn = build_database(
        &asn_entries,
        "GeoLite2-ASN",
        "geosteer SAMPLE ASN database compiled from geo/sample-networks.csv by \
         geosteer-mkgeo. Illustrative test data, NOT accurate ASN data.",
    )
    .with_context(|| format!("building {ASN_FILE} from {source}"))?;

    self_verify(&rows, &city.bytes, &asn.bytes)
        .context("self-verification with the maxminddb reader failed (generator bug)")?;

    let stats = Stats {
        networks: rows.len(),
        ipv4: rows.iter().filter(|r| r.net.addr.is_ipv4()).count(),
        ipv6: rows.iter().filter(|r| r.net.addr.is_ipv6()).count(),
        city_nodes: city.node_count,
        city_records: city.distinct_records,
        asn_networks: asn_entries.len(),
        asn_nodes: asn.node_count,
    };
    Ok(Generated {
        city: city.bytes,
        asn: asn.bytes,
        stats,
    })
}

/// Open the generated bytes with the real reader, run its full verifier and
/// look up every CSV network, checking prefix length and key fields.
fn self_verify(rows: &[Row], city: &[u8], asn: &[u8]) -> Result<()> {
    let city_reader = maxminddb::Reader::from_source(city)?;
    city_reader.verify()?;
    let asn_reader = maxminddb::Reader::from_source(asn)?;
    asn_reader.verify()?;

    for row in rows {
        let found = city_reader.lookup(row.net.addr)?;
        let network = found.network()?;
        ensure!(
            found.has_data() && network.prefix() == row.net.prefix && network.ip() == row.net.addr,
            "line {}: city lookup of {} returned {network} (has_data={})",
            row.line,
            row.net.text,
            found.has_data()
        );
        let city: maxminddb::geoip2::City = found
            .decode()?
            .ok_or_else(|| anyhow!("line {}: no city record", row.line))?;
        ensure!(
            city.country.iso_code == Some(row.country.as_str())
                && city.continent.code == Some(row.continent.as_str())
                && city.location.latitude == Some(row.lat)
                && city.location.longitude == Some(row.lon),
            "line {}: city record for {} decoded as {city:?}",
            row.line,
            row.net.text
        );

        let found = asn_reader.lookup(row.net.addr)?;
        match &row.asn {
            Some((number, org)) => {
                let record: maxminddb::geoip2::Asn = found
                    .decode()?
                    .ok_or_else(|| anyhow!("line {}: no ASN record", row.line))?;
                ensure!(
                    found.network()?.prefix() == row.net.prefix
                        && record.autonomous_system_number == Some(*number)
                        && record.autonomous_system_organization == Some(org.as_str()),
                    "line {}: ASN record for {} decoded as {record:?}",
                    row.line,
                    row.net.text
                );
            }
            None => ensure!(
                !found.has_data(),
                "line {}: {} has no ASN but the ASN db returned data",
                row.line,
                row.net.text
            ),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// CSV parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Network {
    /// Original text from the CSV, for messages.
    text: String,
    addr: IpAddr,
    /// Prefix length in the address family of `addr`.
    prefix: u8,
    /// Position in the IPv6 tree: IPv4 `a.b.c.d` is stored at `::a.b.c.d`.
    key: u128,
    /// Prefix length in the IPv6 tree (IPv4 length + 96).
    tree_len: u8,
}

#[derive(Debug)]
struct Row {
    line: usize,
    net: Network,
    country: String,
    continent: String,
    subdivision: Option<String>,
    city: Option<String>,
    lat: f64,
    lon: f64,
    asn: Option<(u32, String)>,
}

/// The IPv4-mapped range, aliased to the IPv4 subtree; no CSV network may
/// touch it.
const IPV4_MAPPED_KEY: u128 = 0xffff_u128 << 32;
const IPV4_MAPPED_LEN: u8 = 96;

fn parse_csv(text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut seen_header = false;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !seen_header {
            ensure!(
                trimmed == CSV_HEADER,
                "line {line}: expected header `{CSV_HEADER}`, found `{trimmed}`"
            );
            seen_header = true;
            continue;
        }
        rows.push(parse_row(line, content).with_context(|| format!("line {line}"))?);
    }
    ensure!(seen_header, "no header line `{CSV_HEADER}` found");
    ensure!(!rows.is_empty(), "no networks found");
    Ok(rows)
}

fn parse_row(line: usize, content: &str) -> Result<Row> {
    ensure!(
        !content.contains('"'),
        "quoted fields are not supported (no field may contain '\"' or ',')"
    );
    let fields: Vec<&str> = content.split(',').map(str::trim).collect();
    ensure!(
        fields.len() == CSV_FIELDS,
        "expected {CSV_FIELDS} comma-separated fields, found {} (names must not contain commas)",
        fields.len()
    );
    let [
        network,
        country,
        continent,
        subdivision,
        city,
        lat,
        lon,
        asn,
        as_org,
    ] = fields[..]
    else {
        unreachable!("field count checked above");
    };

    let net = parse_network(network)?;

    ensure!(
        COUNTRIES.iter().any(|(code, _)| *code == country),
        "country `{country}` is not a known ISO 3166-1 alpha-2 code \
         (add it to COUNTRIES in tools/mkgeo/src/main.rs if it is valid)"
    );
    ensure!(
        CONTINENTS.iter().any(|(code, _)| *code == continent),
        "continent `{continent}` must be one of AF AN AS EU NA OC SA"
    );
    ensure!(
        subdivision.len() <= 3
            && subdivision
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
        "subdivision `{subdivision}` must be an ISO 3166-2 suffix (1-3 of A-Z, 0-9) or empty"
    );
    let lat = parse_coordinate("lat", lat, 90.0)?;
    let lon = parse_coordinate("lon", lon, 180.0)?;
    let asn = match (asn, as_org) {
        ("", "") => None,
        ("", _) | (_, "") => bail!("asn and as_org must be both set or both empty"),
        (number, org) => {
            let number: u32 = number
                .parse()
                .map_err(|_| anyhow!("asn `{number}` is not a 32-bit unsigned integer"))?;
            ensure!(number != 0, "asn 0 is reserved");
            Some((number, org.to_owned()))
        }
    };

    Ok(Row {
        line,
        net,
        country: country.to_owned(),
        continent: continent.to_owned(),
        subdivision: (!subdivision.is_empty()).then(|| subdivision.to_owned()),
        city: (!city.is_empty()).then(|| city.to_owned()),
        lat,
        lon,
        asn,
    })
}

fn parse_coordinate(name: &str, text: &str, limit: f64) -> Result<f64> {
    let value: f64 = text
        .parse()
        .map_err(|_| anyhow!("{name} `{text}` is not a number"))?;
    ensure!(
        value.is_finite() && (-limit..=limit).contains(&value),
        "{name} `{text}` must be within [-{limit}, {limit}]"
    );
    Ok(value)
}

fn parse_network(text: &str) -> Result<Network> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("network `{text}` must be in CIDR notation (address/length)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| anyhow!("network `{text}`: `{addr}` is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| anyhow!("network `{text}`: bad prefix length `{prefix}`"))?;
    let (key, tree_len) = match addr {
        IpAddr::V4(v4) => {
            ensure!(
                prefix <= 32,
                "network `{text}`: IPv4 prefix length must be <= 32"
            );
            ensure!(
                u32::from(v4) & !mask32(prefix) == 0,
                "network `{text}` has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(v4) & mask32(prefix))
            );
            (u128::from(u32::from(v4)), prefix + 96)
        }
        IpAddr::V6(v6) => {
            ensure!(
                prefix <= 128,
                "network `{text}`: IPv6 prefix length must be <= 128"
            );
            ensure!(
                u128::from(v6) & !mask128(prefix) == 0,
                "network `{text}` has host bits set (did you mean {}/{prefix}?)",
                Ipv6Addr::from(u128::from(v6) & mask128(prefix))
            );
            ensure!(
                !prefixes_overlap(u128::from(v6), prefix, IPV4_MAPPED_KEY, IPV4_MAPPED_LEN),
                "network `{text}` overlaps ::ffff:0:0/96, which is reserved as an alias of \
                 the IPv4 tree; write IPv4-mapped networks in IPv4 notation"
            );
            (u128::from(v6), prefix)
        }
    };
    ensure!(
        tree_len > 0,
        "network `{text}`: a zero-length prefix is not supported"
    );
    Ok(Network {
        text: text.to_owned(),
        addr,
        prefix,
        key,
        tree_len,
    })
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn prefixes_overlap(a: u128, a_len: u8, b: u128, b_len: u8) -> bool {
    let mask = mask128(a_len.min(b_len));
    a & mask == b & mask
}

// ---------------------------------------------------------------------------
// Record construction (GeoLite2-City / GeoLite2-ASN schemas)
// ---------------------------------------------------------------------------

/// A MaxMind DB data-section value (only the types this tool emits).
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Double(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

fn s(text: &str) -> Value {
    Value::Str(text.to_owned())
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn names_en(name: &str) -> Value {
    map([("en", s(name))])
}

fn lookup_name(table: &[(&str, &'static str)], code: &str) -> &'static str {
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
        .expect("code validated while parsing")
}

/// GeoIP2/GeoLite2 City-compatible record. Keys are written in sorted order.
fn city_record(row: &Row) -> Value {
    let country = map([
        ("iso_code", s(&row.country)),
        ("names", names_en(lookup_name(COUNTRIES, &row.country))),
    ]);
    let mut entries = Vec::new();
    if let Some(city) = &row.city {
        entries.push(("city".to_owned(), map([("names", names_en(city))])));
    }
    entries.push((
        "continent".to_owned(),
        map([
            ("code", s(&row.continent)),
            ("names", names_en(lookup_name(CONTINENTS, &row.continent))),
        ]),
    ));
    entries.push(("country".to_owned(), country.clone()));
    entries.push((
        "location".to_owned(),
        map([
            ("latitude", Value::Double(row.lat)),
            ("longitude", Value::Double(row.lon)),
        ]),
    ));
    // Sample data: the registering country is the same as the located one.
    entries.push(("registered_country".to_owned(), country));
    if let Some(subdivision) = &row.subdivision {
        entries.push((
            "subdivisions".to_owned(),
            Value::Array(vec![map([("iso_code", s(subdivision))])]),
        ));
    }
    Value::Map(entries)
}

/// GeoLite2-ASN-compatible record.
fn asn_record(number: u32, org: &str) -> Value {
    map([
        ("autonomous_system_number", Value::U32(number)),
        ("autonomous_system_organization", s(org)),
    ])
}

// ---------------------------------------------------------------------------
// MMDB writer
// ---------------------------------------------------------------------------

struct Entry {
    net: Network,
    line: usize,
    value: Value,
}

struct BuiltDatabase {
    bytes: Vec<u8>,
    node_count: usize,
    distinct_records: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    /// Index into the entry list.
    Data(usize),
}

/// Binary trie over 128-bit keys; `nodes[0]` is the root.
struct Trie {
    nodes: Vec<[Child; 2]>,
}

fn bit(key: u128, depth: u8) -> usize {
    ((key >> (127 - u32::from(depth))) & 1) as usize
}

impl Trie {
    fn new() -> Self {
        Trie {
            nodes: vec![[Child::Empty; 2]],
        }
    }

    fn insert(&mut self, entries: &[Entry], id: usize) -> Result<()> {
        let entry = &entries[id];
        let (key, len) = (entry.net.key, entry.net.tree_len);
        let overlap = |other: usize| {
            anyhow!(
                "line {}: network {} overlaps {} from line {} (networks must not overlap)",
                entry.line,
                entry.net.text,
                entries[other].net.text,
                entries[other].line
            )
        };
        let mut node = 0;
        for depth in 0..len {
            let b = bit(key, depth);
            let child = self.nodes[node][b];
            if depth + 1 == len {
                return match child {
                    Child::Empty => {
                        self.nodes[node][b] = Child::Data(id);
                        Ok(())
                    }
                    Child::Data(other) => Err(overlap(other)),
                    Child::Node(n) => Err(overlap(self.first_data_below(n))),
                };
            }
            node = match child {
                Child::Node(n) => n,
                Child::Empty => {
                    self.nodes.push([Child::Empty; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][b] = Child::Node(n);
                    n
                }
                Child::Data(other) => return Err(overlap(other)),
            };
        }
        unreachable!("tree_len > 0 is checked while parsing")
    }

    /// Nodes are only created on the way to a data record, so every subtree
    /// holds at least one.
    fn first_data_below(&self, mut node: usize) -> usize {
        loop {
            let next = self.nodes[node]
                .iter()
                .find(|c| **c != Child::Empty)
                .expect("trie nodes are never empty");
            match *next {
                Child::Node(n) => node = n,
                Child::Data(id) => return id,
                Child::Empty => unreachable!(),
            }
        }
    }

    /// The child slot reached by following `len` bits of `key` (len >= 1),
    /// creating intermediate nodes. Fails if a data record is met on the way.
    fn slot(&mut self, key: u128, len: u8) -> Option<(usize, usize)> {
        let mut node = 0;
        for depth in 0..len - 1 {
            let b = bit(key, depth);
            node = match self.nodes[node][b] {
                Child::Node(n) => n,
                Child::Empty => {
                    self.nodes.push([Child::Empty; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][b] = Child::Node(n);
                    n
                }
                Child::Data(_) => return None,
            };
        }
        Some((node, bit(key, len - 1)))
    }

    /// What sits at `::/96` (the IPv4 subtree), without modifying the trie.
    fn ipv4_subtree(&self) -> Child {
        let mut child = Child::Node(0);
        for _ in 0..96 {
            child = match child {
                Child::Node(n) => self.nodes[n][0],
                other => return other,
            };
        }
        child
    }
}

fn build_database(
    entries: &[Entry],
    database_type: &str,
    description: &str,
) -> Result<BuiltDatabase> {
    let mut trie = Trie::new();
    for id in 0..entries.len() {
        trie.insert(entries, id)?;
    }

    // Alias ::ffff:0:0/96 (IPv4-mapped) to the IPv4 subtree, as MaxMind's own
    // databases do. Networks touching that range were rejected while parsing,
    // and the IPv4 subtree (under ::/96) never shares nodes with it.
    let ipv4 = trie.ipv4_subtree();
    if ipv4 != Child::Empty {
        let (node, b) = trie
            .slot(IPV4_MAPPED_KEY, IPV4_MAPPED_LEN)
            .ok_or_else(|| anyhow!("internal error: data record above ::ffff:0:0/96"))?;
        ensure!(
            trie.nodes[node][b] == Child::Empty,
            "internal error: ::ffff:0:0/96 in use"
        );
        trie.nodes[node][b] = ipv4;
    }

    // Number nodes breadth-first from the root (root = 0). The alias makes the
    // trie a DAG, so skip already-numbered nodes.
    let mut number = vec![usize::MAX; trie.nodes.len()];
    let mut order = Vec::with_capacity(trie.nodes.len());
    let mut queue = VecDeque::from([0]);
    number[0] = 0;
    while let Some(n) = queue.pop_front() {
        order.push(n);
        for child in trie.nodes[n] {
            if let Child::Node(c) = child
                && number[c] == usize::MAX
            {
                number[c] = order.len() + queue.len();
                queue.push_back(c);
            }
        }
    }
    let node_count = order.len();
    ensure!(
        node_count == trie.nodes.len(),
        "internal error: unreachable trie nodes"
    );

    // Data section, records in entry (network) order.
    let mut data = DataSection::default();
    let offsets: Vec<usize> = entries
        .iter()
        .map(|e| data.store_record(&e.value))
        .collect::<Result<_>>()?;
    let distinct_records = data.records;

    let record_value = |child: Child| -> Result<usize> {
        let value = match child {
            Child::Empty => node_count,
            Child::Node(n) => number[n],
            Child::Data(id) => node_count + DATA_SECTION_SEPARATOR.len() + offsets[id],
        };
        ensure!(
            value <= MAX_RECORD_VALUE,
            "database too large for {RECORD_SIZE}-bit records (record value {value})"
        );
        Ok(value)
    };

    let mut out = Vec::with_capacity(node_count * 6 + data.buf.len() + 512);
    for &n in &order {
        for child in trie.nodes[n] {
            let v = record_value(child)?;
            out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&DATA_SECTION_SEPARATOR);
    out.extend_from_slice(&data.buf);
    out.extend_from_slice(METADATA_MARKER);
    let metadata = Value::Map(vec![
        ("binary_format_major_version".to_owned(), Value::U16(2)),
        ("binary_format_minor_version".to_owned(), Value::U16(0)),
        ("build_epoch".to_owned(), Value::U64(BUILD_EPOCH)),
        ("database_type".to_owned(), s(database_type)),
        ("description".to_owned(), map([("en", s(description))])),
        ("ip_version".to_owned(), Value::U16(6)),
        ("languages".to_owned(), Value::Array(vec![s("en")])),
        (
            "node_count".to_owned(),
            Value::U32(u32::try_from(node_count)?),
        ),
        ("record_size".to_owned(), Value::U16(RECORD_SIZE)),
    ]);
    // Metadata is written without pointers.
    encode_inline(&metadata, &mut out)?;

    Ok(BuiltDatabase {
        bytes: out,
        node_count,
        distinct_records,
    })
}

/// Append-only data section with pointer-based deduplication.
#[derive(Default)]
struct DataSection {
    buf: Vec<u8>,
    /// Pointer-free encoding of a value -> offset of an inline copy of it.
    cache: HashMap<Vec<u8>, usize>,
    /// Number of distinct top-level records stored.
    records: usize,
}

impl DataSection {
    /// Store a top-level record, reusing an identical one. Returns its offset.
    fn store_record(&mut self, value: &Value) -> Result<usize> {
        let canonical = canonical(value)?;
        if let Some(&offset) = self.cache.get(&canonical) {
            return Ok(offset);
        }
        let offset = self.buf.len();
        self.write_inline(value)?;
        self.cache.insert(canonical, offset);
        self.records += 1;
        Ok(offset)
    }

    /// Write `value`, as a pointer to an earlier identical value when that is
    /// shorter. Pointers only ever target inline values, never other pointers.
    fn write_value(&mut self, value: &Value) -> Result<()> {
        let canonical = canonical(value)?;
        if let Some(&offset) = self.cache.get(&canonical) {
            let pointer = encode_pointer(offset)?;
            if pointer.len() < canonical.len() {
                self.buf.extend_from_slice(&pointer);
                return Ok(());
            }
        }
        let offset = self.buf.len();
        self.write_inline(value)?;
        self.cache.entry(canonical).or_insert(offset);
        Ok(())
    }

    fn write_inline(&mut self, value: &Value) -> Result<()> {
        match value {
            Value::Map(entries) => {
                write_header(&mut self.buf, T_MAP, entries.len())?;
                for (key, value) in entries {
                    self.write_value(&Value::Str(key.clone()))?;
                    self.write_value(value)?;
                }
            }
            Value::Array(items) => {
                write_header(&mut self.buf, T_ARRAY, items.len())?;
                for item in items {
                    self.write_value(item)?;
                }
            }
            scalar => encode_inline(scalar, &mut self.buf)?,
        }
        Ok(())
    }
}

/// Pointer-free encoding, used both as cache key and for metadata.
fn canonical(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_inline(value, &mut out)?;
    Ok(out)
}

fn encode_inline(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Str(text) => {
            write_header(out, T_STRING, text.len())?;
            out.extend_from_slice(text.as_bytes());
        }
        Value::Double(v) => {
            write_header(out, T_DOUBLE, 8)?;
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U16(v) => write_uint(out, T_UINT16, &v.to_be_bytes())?,
        Value::U32(v) => write_uint(out, T_UINT32, &v.to_be_bytes())?,
        Value::U64(v) => write_uint(out, T_UINT64, &v.to_be_bytes())?,
        Value::Map(entries) => {
            write_header(out, T_MAP, entries.len())?;
            for (key, value) in entries {
                encode_inline(&Value::Str(key.clone()), out)?;
                encode_inline(value, out)?;
            }
        }
        Value::Array(items) => {
            write_header(out, T_ARRAY, items.len())?;
            for item in items {
                encode_inline(item, out)?;
            }
        }
    }
    Ok(())
}

/// Unsigned integers are stored big-endian with leading zero bytes dropped.
fn write_uint(out: &mut Vec<u8>, type_num: u8, be_bytes: &[u8]) -> Result<()> {
    let skip = be_bytes.iter().take_while(|b| **b == 0).count();
    write_header(out, type_num, be_bytes.len() - skip)?;
    out.extend_from_slice(&be_bytes[skip..]);
    Ok(())
}

/// Control byte: 3 type bits + 5 size bits; types > 7 use the extended form
/// (type bits 0, next byte = type - 7); sizes >= 29 continue in 1-3 bytes.
fn write_header(out: &mut Vec<u8>, type_num: u8, size: usize) -> Result<()> {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else if size < 65_821 + (1 << 24) {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    } else {
        bail!("value of size {size} is too large for the MaxMind DB format");
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

/// Pointer to a data-section offset (relative to the data section start).
fn encode_pointer(offset: usize) -> Result<Vec<u8>> {
    let ctrl = |size_bits: usize, high: usize| {
        (T_POINTER << 5) | ((size_bits as u8) << 3) | (high as u8 & 7)
    };
    Ok(if offset < 2048 {
        vec![ctrl(0, offset >> 8), offset as u8]
    } else if offset < 526_336 {
        let v = offset - 2048;
        vec![ctrl(1, v >> 16), (v >> 8) as u8, v as u8]
    } else if offset < 526_336 + (1 << 27) {
        let v = offset - 526_336;
        vec![ctrl(2, v >> 24), (v >> 16) as u8, (v >> 8) as u8, v as u8]
    } else {
        let v = u32::try_from(offset).context("data section larger than 4 GiB")?;
        let mut bytes = vec![ctrl(3, 0)];
        bytes.extend_from_slice(&v.to_be_bytes());
        bytes
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{Reader, geoip2};

    const SMALL: &str = "\
# comment
network,country,continent,subdivision,city,lat,lon,asn,as_org
81.2.69.0/24,GB,EU,ENG,London,51.51,-0.13,20712,Andrews & Arnold Ltd
127.0.0.0/8,DE,EU,HE,Frankfurt am Main,50.11,8.68,64496,lab
::1/128,DE,EU,HE,Frankfurt am Main,50.11,8.68,64496,lab
2001:db8:1::/48,US,NA,,,39.04,-77.49,,
";

    fn lookup_city<'a>(
        reader: &'a Reader<Vec<u8>>,
        ip: &str,
    ) -> Option<(String, u8, geoip2::City<'a>)> {
        let result = reader.lookup(ip.parse().unwrap()).unwrap();
        let network = result.network().unwrap();
        result
            .decode::<geoip2::City>()
            .unwrap()
            .map(|city| (network.ip().to_string(), network.prefix(), city))
    }

    #[test]
    fn small_database_round_trips() {
        let generated = generate(SMALL, "test").unwrap();
        let reader = Reader::from_source(generated.city.clone()).unwrap();
        reader.verify().unwrap();
        assert_eq!(reader.metadata().database_type, "GeoLite2-City");
        assert_eq!(reader.metadata().build_epoch, BUILD_EPOCH);

        let (net, len, city) = lookup_city(&reader, "81.2.69.1").unwrap();
        assert_eq!((net.as_str(), len), ("81.2.69.0", 24));
        assert_eq!(city.country.iso_code, Some("GB"));
        assert_eq!(city.country.names.english, Some("United Kingdom"));
        assert_eq!(city.continent.code, Some("EU"));
        assert_eq!(city.city.names.english, Some("London"));
        assert_eq!(city.subdivisions[0].iso_code, Some("ENG"));
        assert_eq!(city.location.latitude, Some(51.51));

        // IPv4-mapped alias resolves through the IPv4 subtree.
        let (_, len, city) = lookup_city(&reader, "::ffff:81.2.69.200").unwrap();
        assert_eq!(len, 120);
        assert_eq!(city.country.iso_code, Some("GB"));

        let (_, len, city) = lookup_city(&reader, "::1").unwrap();
        assert_eq!(len, 128);
        assert_eq!(city.country.iso_code, Some("DE"));

        let (_, len, city) = lookup_city(&reader, "2001:db8:1:2::3").unwrap();
        assert_eq!(len, 48);
        assert!(city.subdivisions.is_empty());
        assert_eq!(city.city.names.english, None);

        for missing in ["10.0.0.1", "81.2.70.1", "2001:db8:2::1", "::ffff:10.0.0.1"] {
            let result = reader.lookup(missing.parse().unwrap()).unwrap();
            assert!(!result.has_data(), "{missing}");
            assert!(result.decode::<geoip2::City>().unwrap().is_none());
        }

        let asn = Reader::from_source(generated.asn).unwrap();
        let result = asn.lookup("81.2.69.1".parse().unwrap()).unwrap();
        let record: geoip2::Asn = result.decode().unwrap().unwrap();
        assert_eq!(record.autonomous_system_number, Some(20712));
        assert_eq!(
            record.autonomous_system_organization,
            Some("Andrews & Arnold Ltd")
        );
        // No ASN in the CSV -> not in the ASN database.
        assert!(
            !asn.lookup("2001:db8:1::1".parse().unwrap())
                .unwrap()
                .has_data()
        );
    }

    #[test]
    fn output_is_deterministic_and_independent_of_row_order() {
        let a = generate(SMALL, "a").unwrap();
        let mut lines: Vec<&str> = SMALL.lines().collect();
        lines[2..].reverse();
        let b = generate(&lines.join("\n"), "b").unwrap();
        assert_eq!(a.city, b.city);
        assert_eq!(a.asn, b.asn);
    }

    #[test]
    fn identical_records_are_stored_once() {
        let generated = generate(SMALL, "test").unwrap();
        // 127.0.0.0/8 and ::1/128 share one record.
        assert_eq!(generated.stats.city_records, 3);
        let reader = Reader::from_source(generated.city).unwrap();
        let a = reader
            .lookup("127.0.0.1".parse().unwrap())
            .unwrap()
            .offset();
        let b = reader.lookup("::1".parse().unwrap()).unwrap().offset();
        assert_eq!(a, b);
    }

    #[test]
    fn csv_without_asns_gives_an_empty_but_valid_asn_database() {
        let csv = "network,country,continent,subdivision,city,lat,lon,asn,as_org\n\
                   192.0.2.0/24,US,NA,,,1,1,,\n";
        let generated = generate(csv, "t.csv").unwrap();
        let asn = Reader::from_source(generated.asn).unwrap();
        asn.verify().unwrap();
        assert!(!asn.lookup("192.0.2.1".parse().unwrap()).unwrap().has_data());
    }

    fn error_of(csv: &str) -> String {
        format!("{:#}", generate(csv, "t.csv").unwrap_err())
    }

    const HEADER: &str = "network,country,continent,subdivision,city,lat,lon,asn,as_org\n";

    #[test]
    fn overlapping_networks_name_both_lines() {
        let err = error_of(&format!(
            "{HEADER}10.0.0.0/8,DE,EU,,,1,1,,\n10.1.0.0/16,DE,EU,,,1,1,,\n"
        ));
        assert!(err.contains("line 3") && err.contains("line 2"), "{err}");
        let err = error_of(&format!(
            "{HEADER}10.1.0.0/16,DE,EU,,,1,1,,\n10.0.0.0/8,DE,EU,,,1,1,,\n"
        ));
        assert!(
            err.contains("10.0.0.0/8") && err.contains("10.1.0.0/16"),
            "{err}"
        );
        let err = error_of(&format!(
            "{HEADER}10.0.0.0/8,DE,EU,,,1,1,,\n10.0.0.0/8,FR,EU,,,1,1,,\n"
        ));
        assert!(err.contains("overlaps"), "{err}");
    }

    #[test]
    fn bad_rows_name_the_line() {
        for (row, needle) in [
            ("\"10.0.0.0/8\",DE,EU,,,1,1,,", "quoted"),
            ("10.0.0.0/8,DE,EU,,,1,1,,,", "fields"),
            ("10.0.0.1/8,DE,EU,,,1,1,,", "host bits"),
            ("10.0.0.0/8,UK,EU,,,1,1,,", "UK"),
            ("10.0.0.0/8,DE,XX,,,1,1,,", "continent"),
            ("10.0.0.0/8,DE,EU,,,91,1,,", "lat"),
            ("10.0.0.0/8,DE,EU,,,1,1,12,", "both"),
            ("::ffff:0:0/104,DE,EU,,,1,1,,", "::ffff:0:0/96"),
            ("0.0.0.0/33,DE,EU,,,1,1,,", "<= 32"),
        ] {
            let err = error_of(&format!("# c\n{HEADER}{row}\n"));
            assert!(
                err.contains("line 3") && err.contains(needle),
                "{row}: {err}"
            );
        }
        assert!(error_of("network,country\n").contains("expected header"));
    }

    /// The committed sample databases must match what the generator produces
    /// from the committed CSV (same as `geosteer-mkgeo --check`).
    #[test]
    fn committed_sample_databases_are_up_to_date() {
        // This crate lives in tools/mkgeo; the sample data in the repository root's geo/.
        let geo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../geo");
        let csv = fs::read_to_string(geo.join("sample-networks.csv")).unwrap();
        let generated = generate(&csv, "geo/sample-networks.csv").unwrap();
        for (name, bytes) in [(CITY_FILE, &generated.city), (ASN_FILE, &generated.asn)] {
            let on_disk = fs::read(geo.join(name)).unwrap();
            assert!(
                on_disk == *bytes,
                "geo/{name} is stale: run `cargo run -p geosteer-mkgeo`"
            );
        }
    }
}
