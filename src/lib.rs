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
//! - [`app`]: wiring: load and validate, bind, serve, shut down gracefully.
//!
//! The hot path is synchronous and lock-free: one `ArcSwap` load per query; everything slow
//! (parsing, loading, probing) happens elsewhere and publishes whole snapshots.

pub mod app;
pub mod config;
pub mod dns;
pub mod zone;
