//! Helpers for tests of geosteer fleets (`[cluster]` on a real etcd, `common::etcd`).

use std::net::SocketAddr;

use super::Server;
use super::etcd::EtcdCluster;

/// A `[cluster]` table for instance `name` on `etcd` under `prefix`, with the short timings
/// the tests use (200 ms heartbeat, 2 s lease, 500 ms per request) and `more` lines appended.
pub fn cluster_toml(etcd: &EtcdCluster, name: &str, prefix: &str, more: &str) -> String {
    format!(
        "[cluster]\netcd = {}\ninstance = \"{name}\"\nprefix = \"{prefix}\"\n\
         heartbeat = \"200ms\"\nlease_ttl = \"2s\"\nrequest_timeout = \"500ms\"\n{more}",
        etcd.toml_endpoints()
    )
}

/// The instance's admin API address.
pub fn admin(s: &Server) -> SocketAddr {
    s.admin.expect("admin API")
}

/// The A answer (addresses, space-separated) a London client (ECS 81.2.69.0/24) gets for
/// `name`.
pub fn london(s: &Server, name: &str) -> String {
    let d = s.dig(&["A", name, "+subnet=81.2.69.0/24"]);
    d.answer
        .iter()
        .filter_map(|r| r.split_whitespace().last().map(String::from))
        .collect::<Vec<_>>()
        .join(" ")
}
