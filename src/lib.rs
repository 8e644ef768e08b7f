//! geosteer — an authoritative DNS server that steers clients to the nearest healthy region.
//!
//! It answers for the MQTT hostname of a multi-region service (EMQX behind regional load
//! balancers) the way Azure Traffic Manager's "Performance" routing does — lowest estimated
//! latency among healthy endpoints — and serves ordinary static zones beside it.
//!
//! # Layout
//! Layers, each importing only from those below it (no cycles; nothing imports [`app`];
//! nothing below the control plane reads the wall clock — it is given a [`base::Clock`]):
//! - [`app`]: load, bind, and [`app::run`] — the embeddable server (bound sockets, an injected
//!   clock and a shutdown future in; `main` owns the runtime and the signals). [`cli`]: the
//!   admin-API client.
//! - [`ops`]: the control plane (reload, forced states, drills, typed errors), the admin API,
//!   and the fleet (forced states, drills and health votes shared through etcd).
//! - [`dns`]: the request handler (decode → decide → encode), answer cache, RRL, transports.
//! - [`metrics`], [`explain`]: counters and their rendering; the "why this answer" trace.
//! - [`state`]: the serving state and how it is built from a configuration.
//! - [`probing`]: probes, the prober and its TLS clients, load polling.
//! - [`config`]: the TOML configuration, parsed strictly; errors name file, line and field.
//! - [`cluster`]: `[cluster]` settings and the etcd client the fleet's control state lives in.
//! - [`routing`]: traffic profiles, one file per routing method, the latency model, and the one
//!   effective-state rule ([`routing::effective`]) every consumer calls.
//! - [`health`]: endpoint health as routing reads it; monitor settings as plain data.
//! - [`zone`], [`locate`], [`geo`]: zones; GeoIP client location; distances and regions.
//! - [`wire`]: the DNS wire format (parser, encoder, name helpers).
//! - [`base`]: diagnostics, serde helpers, safe file reads, counters, the clock.
//!
//! The hot path is synchronous and lock-free: one `ArcSwap` load per query; everything slow
//! (parsing, loading, probing) happens elsewhere and publishes whole snapshots.

pub mod app;
pub mod base;
pub mod cli;
pub mod cluster;
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
