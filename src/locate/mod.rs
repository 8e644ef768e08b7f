//! Client location: IP address → where on Earth, which country and network, and how wide the
//! network is that this answer holds for.
//!
//! Backed by MaxMind-format databases (GeoLite2-City / GeoIP2-City / DB-IP City, optionally an
//! ASN database), memory-mapped. Lookups borrow from the map and allocate nothing; the result
//! is a small `Copy` value.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Mmap, Reader};
use serde::{Deserialize, Serialize};

use crate::base::{ConfigError, ConfigErrors};
use crate::geo::GeoPoint;

/// A two- or three-letter code (country, continent, subdivision) stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Code {
    bytes: [u8; 3],
    len: u8,
}

impl Code {
    /// Upper-cases and stores `s` if it is 1..=3 ASCII alphanumerics.
    pub fn new(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let mut bytes = [0u8; 3];
        for (d, b) in bytes.iter_mut().zip(s.bytes()) {
            *d = b.to_ascii_uppercase();
        }
        Some(Self {
            bytes,
            len: s.len() as u8,
        })
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a client is, as far as the databases know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Location {
    /// The address that was looked up (ECS address or query source). When an ECS address has
    /// no location and the resolver's is used instead (`dns::handler::locate_client_traced`),
    /// this stays the ECS address, and `prefix_len` its network: they identify the client,
    /// while the fields below describe where its resolver is.
    pub addr: Option<IpAddr>,
    /// Coordinates, if the database has them.
    pub point: Option<GeoPoint>,
    /// ISO 3166-1 country code.
    pub country: Option<Code>,
    /// Continent code (AF AN AS EU NA OC SA).
    pub continent: Option<Code>,
    /// First-level subdivision ISO code (the part after `CC-`).
    pub subdivision: Option<Code>,
    /// Autonomous system number, from the ASN database.
    pub asn: Option<u32>,
    /// Prefix length of the database network the address fell in (found or not): every
    /// address in that network gets the same location, which bounds the ECS scope.
    pub prefix_len: u8,
}

impl Location {
    /// Whether anything useful is known.
    pub fn is_known(&self) -> bool {
        self.point.is_some() || self.country.is_some() || self.continent.is_some()
    }
}

/// Which step of the client-location fallback chain placed the client: the ECS subnet's
/// address, else the resolver's own (query source) address, else nowhere (each routing method
/// then uses its location-free order; `performance`: the profile's endpoint order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocatedBy {
    /// The EDNS Client Subnet address had a location.
    Ecs,
    /// The resolver's address: the query had no usable ECS (none, or source prefix 0), or its
    /// subnet has no location.
    Resolver,
    /// Neither address has a location.
    None,
}

/// How the client was located, for `explain` and `_why`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The step that supplied the location.
    pub by: LocatedBy,
    /// The address whose database record supplied it (`None` when nowhere).
    pub from: Option<IpAddr>,
    /// An ECS address was given (source prefix > 0) but has no location.
    pub ecs_unlocated: bool,
}

#[derive(Deserialize, Default)]
struct IsoCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct ContinentCode<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct Coords {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

/// The part of a City record routing needs; decoding only this keeps lookups allocation-free
/// (the full `geoip2::City` carries vectors and name maps).
#[derive(Deserialize, Default)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: IsoCode<'a>,
    #[serde(borrow, default)]
    continent: ContinentCode<'a>,
    #[serde(default)]
    location: Coords,
}

#[derive(Deserialize, Default)]
struct AsnRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
}

/// One opened database.
struct Db {
    path: PathBuf,
    reader: Reader<Mmap>,
}

fn open(path: &Path, what: &str) -> Result<Db, ConfigErrors> {
    // A FIFO would block `open_mmap`'s plain open (and with it every reload) for ever; a
    // device cannot be mapped usefully. Checked without blocking first; other errors (missing
    // file, …) are left to the reader, which words them as before.
    if let Err(e) = crate::base::file::open_regular(path)
        && e.starts_with("not a regular file")
    {
        return Err(ConfigError::file(path, format!("cannot open {what} database: {e}")).into());
    }
    // SAFETY: the map is read-only and stays valid while the file's inode lives. It must not be
    // modified in place while mapped; updates must replace the file by rename (as
    // `geoipupdate` does, and as the README tells operators), which leaves our mapping intact.
    let reader = unsafe { Reader::open_mmap(path) }
        .map_err(|e| ConfigError::file(path, format!("cannot open {what} database: {e}")))?;
    Ok(Db {
        path: path.to_path_buf(),
        reader,
    })
}

/// GeoIP lookups. Without a City database every client is "unknown" and routing uses its
/// documented fallbacks.
#[derive(Default)]
pub struct Locator {
    city: Option<Db>,
    asn: Option<Db>,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locator")
            .field("city", &self.city.as_ref().map(|d| &d.path))
            .field("asn", &self.asn.as_ref().map(|d| &d.path))
            .finish()
    }
}

impl Locator {
    /// Opens the databases (blocking file I/O: call it off the async runtime).
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<Self, ConfigErrors> {
        let city = city.map(|p| open(p, "City")).transpose()?;
        let asn = asn.map(|p| open(p, "ASN")).transpose()?;
        if let Some(db) = &city {
            let t = &db.reader.metadata().database_type;
            if !t.contains("City") {
                return Err(ConfigError::file(
                    &db.path,
                    format!("database type {t:?} is not a City database"),
                )
                .into());
            }
        }
        Ok(Self { city, asn })
    }

    /// Calls `f` with the first address of networks of the City database that hold data: all
    /// of them, or every k-th when there are more than about `max` (GeoLite2-City has millions;
    /// the map's share of GeoIP networks needs a spread, not all). Returns the stride used.
    pub fn sample_networks(&self, max: usize, mut f: impl FnMut(IpAddr)) -> usize {
        let Some(db) = &self.city else {
            return 1;
        };
        // The search tree has about one node per network: a stride from its size keeps the
        // sample near `max` without counting the networks first.
        let nodes = db.reader.metadata().node_count as usize;
        let stride = (nodes / max.max(1)).max(1);
        let Ok(networks) = db.reader.networks(Default::default()) else {
            return stride;
        };
        for (i, item) in networks.enumerate() {
            if i % stride != 0 {
                continue;
            }
            if let Ok(r) = item
                && r.has_data()
                && let Ok(net) = r.network()
            {
                f(net.network());
            }
        }
        stride
    }

    /// Whether a City database is loaded.
    pub fn has_city(&self) -> bool {
        self.city.is_some()
    }

    /// The City-database network `addr` falls in, as (address, length): the `prefix_len`
    /// [`Self::locate`] reports, found by the tree walk alone, without decoding the record —
    /// every address of it gets the same location. Without a City database (or on a database
    /// error), the address itself.
    pub fn network(&self, addr: IpAddr) -> (IpAddr, u8) {
        let addr = addr.to_canonical();
        let mut prefix = if addr.is_ipv4() { 32 } else { 128 };
        if let Some(db) = &self.city
            && let Ok(r) = db.reader.lookup(addr)
            && let Ok(net) = r.network()
        {
            prefix = net.prefix();
        }
        crate::base::cut(addr, prefix)
    }

    /// Looks an address up. Never fails: a miss or a database error is "unknown".
    pub fn locate(&self, addr: IpAddr, want_subdivision: bool) -> Location {
        let addr = addr.to_canonical();
        let mut loc = Location {
            addr: Some(addr),
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            ..Default::default()
        };
        if let Some(db) = &self.city
            && let Ok(r) = db.reader.lookup(addr)
        {
            if let Ok(net) = r.network() {
                loc.prefix_len = net.prefix();
            }
            if let Ok(Some(rec)) = r.decode::<CityRecord<'_>>() {
                loc.country = rec.country.iso_code.and_then(Code::new);
                loc.continent = rec.continent.code.and_then(Code::new);
                if let (Some(lat), Some(lon)) = (rec.location.latitude, rec.location.longitude) {
                    let p = GeoPoint { lat, lon };
                    loc.point = p.is_valid().then_some(p);
                }
            }
            if want_subdivision
                && let Ok(Some(s)) =
                    r.decode_path::<&str>(&maxminddb::path!["subdivisions", 0, "iso_code"])
            {
                loc.subdivision = Code::new(s);
            }
        }
        if let Some(db) = &self.asn
            && let Ok(r) = db.reader.lookup(addr)
            && let Ok(Some(rec)) = r.decode::<AsnRecord>()
        {
            loc.asn = rec.autonomous_system_number;
        }
        loc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Locator {
        let geo = Path::new(env!("CARGO_MANIFEST_DIR")).join("geo");
        Locator::open(
            Some(&geo.join("sample-city.mmdb")),
            Some(&geo.join("sample-asn.mmdb")),
        )
        .unwrap()
    }

    /// (address, country, continent, prefix length) against the generated sample database.
    #[test]
    fn sample_database_lookups() {
        let l = sample();
        let cases = [
            ("81.2.69.1", Some("GB"), Some("EU"), 24),
            ("216.160.83.56", Some("US"), Some("NA"), 24),
            ("1.0.16.1", Some("JP"), Some("AS"), 20),
            ("127.0.0.1", Some("DE"), Some("EU"), 8),
            ("2a01:4f8:c0c:1::2", Some("DE"), Some("EU"), 32),
            ("::ffff:81.2.69.1", Some("GB"), Some("EU"), 24),
            ("10.0.0.1", None, None, 7),
        ];
        for (ip, country, continent, prefix) in cases {
            let loc = l.locate(ip.parse().unwrap(), true);
            assert_eq!(
                loc.country.map(|c| c.to_string()).as_deref(),
                country,
                "{ip}"
            );
            assert_eq!(
                loc.continent.map(|c| c.to_string()).as_deref(),
                continent,
                "{ip}"
            );
            assert_eq!(loc.prefix_len, prefix, "{ip}");
            assert_eq!(loc.point.is_some(), country.is_some(), "{ip}");
        }
        let london = l.locate("81.2.69.1".parse().unwrap(), true);
        assert_eq!(
            london.subdivision.map(|c| c.to_string()).as_deref(),
            Some("ENG")
        );
        assert_eq!(london.asn, Some(20712));
    }

    #[test]
    fn no_database_means_unknown() {
        let loc = Locator::default().locate("81.2.69.1".parse().unwrap(), true);
        assert!(!loc.is_known());
        assert_eq!(loc.prefix_len, 32);
    }
}
