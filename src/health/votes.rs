//! Fleet health: every instance's probe verdict on an endpoint is a vote, and the fleet's
//! verdict follows a quorum rule over the votes — so one instance whose path to a region breaks
//! (a peering problem near it, not the region) cannot fail the region over on its own, and
//! every NS computes the same verdict from the same votes.
//!
//! Plain data and one pure rule; the prober applies it when it publishes, the fleet link
//! (`ops::fleet`) carries the votes through etcd.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::geo::GeoPoint;

/// How many "down" votes make an endpoint down for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quorum {
    /// More than half of the instances with an opinion say down (the default).
    #[default]
    Majority,
    /// Any one instance saying down is enough (the most sensitive; what each instance alone
    /// does without a fleet, but then for the whole fleet).
    Any,
    /// Every instance with an opinion must say down.
    All,
    /// At least this many instances say down (capped at the number with an opinion).
    Count(usize),
    /// At least this share (percent, 1–100) of the instances with an opinion say down.
    Percent(u8),
}

impl Quorum {
    /// Parses `"majority"`, `"any"`, `"all"`, `"2"`, `"60%"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "majority" => Ok(Self::Majority),
            "any" => Ok(Self::Any),
            "all" => Ok(Self::All),
            t if t.ends_with('%') => match t.trim_end_matches('%').trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Self::Percent(p)),
                _ => Err(format!("{s:?}: a percentage is 1% to 100%")),
            },
            t => match t.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::Count(n)),
                _ => Err(format!(
                    "{s:?}: give \"majority\", \"any\", \"all\", a count (\"2\") or a percentage (\"60%\")"
                )),
            },
        }
    }

    /// Whether `down` of `voters` votes make the endpoint down. No voters: not down.
    pub fn is_down(self, down: usize, voters: usize) -> bool {
        if voters == 0 || down == 0 {
            return false;
        }
        match self {
            Self::Majority => down * 2 > voters,
            Self::Any => true,
            Self::All => down == voters,
            Self::Count(n) => down >= n.min(voters),
            Self::Percent(p) => down * 100 >= usize::from(p) * voters,
        }
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Majority => f.write_str("majority"),
            Self::Any => f.write_str("any"),
            Self::All => f.write_str("all"),
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One instance's opinion of one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The instance.
    pub instance: String,
    /// Its probes say the endpoint is up.
    pub up: bool,
    /// Its smoothed probe RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Since when it holds this opinion, Unix seconds.
    pub since_unix: f64,
}

/// The fleet's measured RTT matrix: where the instances are (their vantage points) and what
/// each one's probes measure to each endpoint. The performance method estimates a client's
/// RTT to an endpoint through the vantage points (see `routing::method::performance`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vantages {
    /// Instance names and locations; the index is what [`Self::rtt`] refers to.
    pub points: Vec<(String, GeoPoint)>,
    /// Per endpoint key: (vantage index, probe RTT ms) for every vantage with a measurement.
    pub rtt: crate::base::FastMap<Arc<str>, Vec<(u16, f64)>>,
}

/// The other instances' votes, per endpoint key, and the rule that weighs them.
#[derive(Debug, Clone, Default)]
pub struct Votes {
    /// The rule.
    pub quorum: Quorum,
    /// This instance's name (its own vote is its tracker's verdict, listed under this name).
    pub instance: String,
    /// Other instances' votes per endpoint key (this instance's own opinion is its tracker's).
    pub others: HashMap<Arc<str>, Vec<Vote>>,
    /// Where each instance is (its vantage point), this one included when it has a location.
    pub points: HashMap<String, GeoPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vantage_alone_does_not_fail_an_endpoint_over_by_majority() {
        let q = Quorum::Majority;
        assert!(!q.is_down(1, 3));
        assert!(q.is_down(2, 3));
        assert!(!q.is_down(1, 2), "a tie keeps it up");
        assert!(q.is_down(1, 1), "alone, an instance decides by itself");
        assert!(!q.is_down(0, 0));
    }

    #[test]
    fn the_rules_parse_and_weigh_as_documented() {
        assert_eq!(Quorum::parse("any").unwrap(), Quorum::Any);
        assert!(Quorum::Any.is_down(1, 9));
        assert!(!Quorum::parse("all").unwrap().is_down(8, 9));
        assert!(Quorum::parse("2").unwrap().is_down(2, 9));
        assert!(
            Quorum::Count(5).is_down(2, 2),
            "capped at the voters there are"
        );
        let p = Quorum::parse("82%").unwrap();
        assert!(!p.is_down(7, 9) && p.is_down(8, 9));
        assert!(Quorum::parse("0").is_err() && Quorum::parse("101%").is_err());
        assert!(Quorum::parse("most").is_err());
    }
}
