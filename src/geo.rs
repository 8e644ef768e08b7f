//! Geography: points on the globe, great-circle distance, and the cloud region catalogue.
//!
//! The catalogue (`geo/regions.toml`: Azure, AWS and GCP regions with metro coordinates) is
//! compiled into the binary so an endpoint can say `region = "azure:westeurope"` on any
//! machine; `[routing] regions` may name an extra file whose entries add to or replace it.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::base::{ConfigError, ConfigErrors};

/// The bundled catalogue.
pub const EMBEDDED_REGIONS: &str = include_str!("../geo/regions.toml");

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point in WGS84 degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GeoPoint {
    /// Latitude, −90..=90.
    pub lat: f64,
    /// Longitude, −180..=180.
    pub lon: f64,
}

impl GeoPoint {
    /// Great-circle distance in km (haversine; ≤ 0.5 % error from the ellipsoid, far below
    /// what routing on the Internet can resolve).
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }

    /// Whether both coordinates are within range.
    pub fn is_valid(&self) -> bool {
        (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon)
    }
}

/// One cloud region of the catalogue.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// `provider:region`, e.g. `azure:westeurope`.
    pub name: String,
    /// `azure`, `aws` or `gcp` (free text for operator additions).
    pub provider: String,
    /// Human-readable name.
    pub display: String,
    /// Latitude of the region's metro.
    pub lat: f64,
    /// Longitude of the region's metro.
    pub lon: f64,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Continent code (AF AN AS EU NA OC SA).
    pub continent: String,
}

impl Region {
    /// The region's location.
    pub fn point(&self) -> GeoPoint {
        GeoPoint {
            lat: self.lat,
            lon: self.lon,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    region: Vec<Region>,
}

/// Region name → region.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    regions: HashMap<String, Region>,
}

impl Catalogue {
    /// The embedded catalogue, plus (replacing same-named entries) an optional extra file.
    pub fn load(extra: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut cat = Self::default();
        cat.add(Path::new("<embedded geo/regions.toml>"), EMBEDDED_REGIONS)?;
        if let Some(p) = extra {
            let text = crate::base::file::read_regular_text(p, crate::base::file::MAX_CONFIG_BYTES)
                .map_err(|e| ConfigError::file(p, format!("cannot read region catalogue: {e}")))?;
            cat.add(p, &text)?;
        }
        Ok(cat)
    }

    fn add(&mut self, file: &Path, text: &str) -> Result<(), ConfigErrors> {
        let parsed: RegionFile =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
        for r in parsed.region {
            if !r.point().is_valid() {
                return Err(ConfigError::new(
                    file,
                    0,
                    format!("region {}", r.name),
                    "latitude/longitude out of range",
                )
                .into());
            }
            self.regions.insert(r.name.clone(), r);
        }
        Ok(())
    }

    /// A region by name.
    pub fn get(&self, name: &str) -> Option<&Region> {
        self.regions.get(name)
    }

    /// For a name that is not in the catalogue, the names it most likely meant: the same region
    /// under its provider (`eastus` → `azure:eastus`), else names differing in case or
    /// punctuation (`Azure:East-US`). Sorted; empty when nothing is close.
    pub fn suggest(&self, name: &str) -> Vec<&str> {
        let fold = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == ':')
                .flat_map(|c| c.to_lowercase())
                .collect()
        };
        let want = fold(name);
        let bare = want.rsplit(':').next().unwrap_or(&want).to_string();
        let mut found: Vec<&str> = self
            .regions
            .keys()
            .map(String::as_str)
            .filter(|k| {
                let f = fold(k);
                f == want || f.rsplit(':').next() == Some(bare.as_str())
            })
            .collect();
        found.sort_unstable();
        found
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_known_values() {
        let amsterdam = GeoPoint {
            lat: 52.37,
            lon: 4.90,
        };
        let virginia = GeoPoint {
            lat: 38.95,
            lon: -77.45,
        };
        let singapore = GeoPoint {
            lat: 1.29,
            lon: 103.85,
        };
        let d = amsterdam.distance_km(&virginia);
        assert!((6100.0..6300.0).contains(&d), "{d}");
        let d = amsterdam.distance_km(&singapore);
        assert!((10_400.0..10_600.0).contains(&d), "{d}");
        assert!(amsterdam.distance_km(&amsterdam) < 1e-9);
    }

    #[test]
    fn embedded_catalogue_covers_three_providers() {
        let c = Catalogue::load(None).unwrap();
        for name in ["azure:westeurope", "aws:us-east-1", "gcp:asia-southeast1"] {
            assert!(c.get(name).is_some(), "{name}");
        }
        assert!(c.len() >= 100);
    }
}
