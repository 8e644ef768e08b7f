//! Deserialisers for the value types an operator types by hand — durations and socket
//! addresses — with messages that quote the value and say what is wrong with it.
//!
//! The standard ones say "invalid socket address syntax" or "expected a duration": true, but the
//! operator still has to find which of several addresses in a list is bad and why. These quote
//! the value (`"127.0.0.1:70000"`), name the problem (`port 70000 is above 65535`) and show the
//! accepted form. `toml` attaches the value's span, so [`super::diag::ConfigError::from_toml`] still
//! points at the exact line.
//!
//! Use as `#[serde(with = "crate::base::de::duration")]` (or `opt_duration` for
//! `Option<Duration>` fields with `#[serde(default)]`) and `crate::base::de::socket_addrs`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Why `text` is not a duration, in words (`None` when it is one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        let why = match e {
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("unknown unit {unit:?}")
            }
            humantime::DurationError::NumberExpected(_) => "a number must come first".into(),
            humantime::DurationError::Empty => "it is empty".into(),
            humantime::DurationError::NumberOverflow => "the number is too large".into(),
            humantime::DurationError::InvalidCharacter(_) => "it has an invalid character".into(),
        };
        format!("{text:?} is not a duration: {why} (write e.g. 500ms, 10s, 5m, 1h)")
    })
}

/// Why `text` is not an `ip:port` socket address, or the address.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let hint = "write ip:port, e.g. 127.0.0.1:5353 or [::1]:5353";
    // Split off the port the way the address would be read: `[v6]:port` or `v4-or-name:port`.
    let split = if let Some(rest) = text.strip_prefix('[') {
        rest.split_once("]:")
            .map(|(h, p)| (h, Some(p)))
            .or_else(|| rest.strip_suffix(']').map(|h| (h, None)))
    } else if text.matches(':').count() > 1 {
        // Bare IPv6 without brackets: the port cannot be told apart from the address.
        return Err(if text.parse::<IpAddr>().is_ok() {
            format!("{text:?} has no port; IPv6 addresses take brackets ([{text}]:5353)")
        } else {
            format!("{text:?} is not an address: IPv6 addresses with a port need brackets ({hint})")
        });
    } else {
        Some(match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        })
    };
    let Some((host, port)) = split else {
        return Err(format!("{text:?} is not an address ({hint})"));
    };
    if host.parse::<IpAddr>().is_err() {
        return Err(format!(
            "{text:?}: {host:?} is not an IP address; host names are not resolved here ({hint})"
        ));
    }
    let Some(port) = port else {
        return Err(format!("{text:?} has no port ({hint})"));
    };
    Err(match port.parse::<u64>() {
        Ok(n) if n > u64::from(u16::MAX) => format!("{text:?}: port {n} is above 65535"),
        _ => format!("{text:?}: {port:?} is not a port number (0..=65535)"),
    })
}

/// `Duration` from a string such as `"10s"`.
pub mod duration {
    use super::*;

    /// Deserialises a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(de::Error::custom)
    }
}

/// `Option<Duration>` from an optional string; use with `#[serde(default)]`.
pub mod opt_duration {
    use super::*;

    /// Deserialises a present duration string as `Some`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// One socket address, with an error that quotes the value.
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_socket_addr(&s).map(Addr).map_err(de::Error::custom)
    }
}

/// `Vec<SocketAddr>` from a list of `"ip:port"` strings; each element is checked on its own so
/// the error quotes the bad one.
pub mod socket_addrs {
    use super::*;

    /// Deserialises the list.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<SocketAddr>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of \"ip:port\" strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(Addr(a)) = seq.next_element()? {
                    v.push(a);
                }
                Ok(v)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("10 parsecs").unwrap_err(),
            "\"10 parsecs\" is not a duration: unknown unit \"parsecs\" (write e.g. 500ms, 10s, 5m, 1h)"
        );
        assert!(parse_duration("").unwrap_err().contains("it is empty"));
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("a number must come first")
        );
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_addr("127.0.0.1:53"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 53)))
        );
        assert!(parse_socket_addr("[::1]:53").is_ok());
        let cases = [
            (
                "127.0.0.1:70000",
                "\"127.0.0.1:70000\": port 70000 is above 65535",
            ),
            (
                "127.0.0.1:x",
                "\"127.0.0.1:x\": \"x\" is not a port number (0..=65535)",
            ),
            ("127.0.0.1", "\"127.0.0.1\" has no port ("),
            (
                "localhost:53",
                "\"localhost:53\": \"localhost\" is not an IP address;",
            ),
            (
                "::1",
                "\"::1\" has no port; IPv6 addresses take brackets ([::1]:5353)",
            ),
            (
                "::1:53:x",
                "\"::1:53:x\" is not an address: IPv6 addresses with a port",
            ),
            ("[::1]", "\"[::1]\" has no port ("),
            ("[::1]:99999", "\"[::1]:99999\": port 99999 is above 65535"),
            ("[nope]:53", "\"[nope]:53\": \"nope\" is not an IP address;"),
            ("[::1", "\"[::1\" is not an address ("),
        ];
        for (input, want) in cases {
            let got = parse_socket_addr(input).unwrap_err();
            assert!(got.starts_with(want), "{input}: {got}");
        }
    }
}
