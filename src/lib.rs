//! geosteer — an authoritative DNS server that steers clients to the nearest healthy region.
//!
//! It answers for the MQTT hostname of a multi-region service (EMQX behind regional load
//! balancers) the way Azure Traffic Manager's "Performance" routing does — lowest estimated
//! latency among healthy endpoints — and serves ordinary static zones beside it.
//!
//! # Layout
//! - [`config`]: the TOML configuration, parsed strictly; errors name file, line and field.
//! - [`zone`]: RFC 1035 master files loaded into immutable, query-ready zones.
//! - [`dns`]: wire format, the request handler (decode → decide → encode) and transports.
//! - [`routing`]: traffic profiles, the routing methods and the latency model.
//! - [`locate`]: GeoIP client location; [`geo`]: distances and the cloud region catalogue.
//! - [`health`]: endpoint monitor states and RTTs as routing reads them.
//! - [`explain`]: the "why this answer" trace for a name and a client.
//! - [`app`]: wiring: load and validate, bind, serve, shut down gracefully.
//!
//! The hot path is synchronous and lock-free: one `ArcSwap` load per query; everything slow
//! (parsing, loading, probing) happens elsewhere and publishes whole snapshots.

pub mod app;
pub mod base;
pub mod cli;
pub mod config;
pub mod dns;
pub mod explain;
pub mod geo;
pub mod health;
pub mod locate;
pub mod metrics;
pub mod ops;
pub mod probing;
pub mod routing;
pub mod state;
pub mod wire;
pub mod zone;
