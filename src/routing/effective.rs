//! The one effective-state rule.
//!
//! Whether an endpoint is served is decided here and only here; routing, metrics,
//! `/api/status`, the map, `explain` and `_why` all ask [`RoutingTable::effective_state`], so
//! they cannot disagree (gdnsd's model: one compact health value every consumer reads).
//!
//! The rule, first match wins:
//! 1. `enabled = false` → `Disabled` (configuration beats everything: a disabled endpoint is
//!    not forced back into service by an operator override).
//! 2. A forced state that applies to the viewer → `ForcedDown` / `ForcedUp`. A scoped force
//!    applies only to clients inside its networks; operator views (metrics, status, map) see
//!    the state "for everyone", i.e. only unscoped forces. When several forces hit one
//!    endpoint, the one of highest [`precedence`] among those that apply to the viewer decides:
//!    an operator's force on the endpoint, then a drill's force on it, then an operator's force
//!    on its region (the more specific target wins; on one endpoint the operator beats a drill,
//!    which is only a rehearsal). A scoped force never masks a lower one for clients outside
//!    its scope: they get the next force that applies to them, or none.
//! 3. A nested endpoint → `Online` while at least `min_child_endpoints` (and the IPv4/IPv6
//!    minimums) of its child profile's endpoints are served by this same rule, else `Degraded`.
//! 4. Otherwise the probes' verdict (`CheckingEndpoint`, `Online`, `Degraded`, `Unmonitored`).
//!
//! On top of the endpoint states, one profile-level rule: when no endpoint able to answer a
//! family is served but some are `Degraded`, those are served anyway (fail-open, see
//! [`RoutingTable::fails_open`]); `ForcedDown` and `Disabled` endpoints never are.

use std::net::IpAddr;

use super::{Endpoint, Family, MAX_DEPTH, RoutingTable, Small, Target};
use crate::health::{
    EndpointHealth, Force, ForceAction, ForceOrigin, HealthSnapshot, MonitorState,
};

/// Precedence of a force by where it comes from: lower wins (see the module doc).
pub fn precedence(origin: ForceOrigin) -> u8 {
    match origin {
        ForceOrigin::Endpoint => 0,
        ForceOrigin::Drill => 1,
        ForceOrigin::Region => 2,
    }
}

/// The force that decides an endpoint's state for `viewer`: of the forces that apply to the
/// viewer, the one of highest [`precedence`] (on a tie, the earlier one).
pub fn force_for(h: &EndpointHealth, viewer: Viewer) -> Option<&Force> {
    h.forced
        .iter()
        .filter(|(_, f)| f.applies_to(viewer.addr()))
        .min_by_key(|(o, _)| precedence(*o))
        .map(|(_, f)| &**f)
}

/// Whose view a state is computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// A client at this address (scoped forces that contain it apply).
    Client(IpAddr),
    /// Everyone: operator views, and clients whose address is unknown (unscoped forces only).
    Everyone,
}

impl Viewer {
    /// The viewer of a client whose address may be unknown.
    pub fn of(addr: Option<IpAddr>) -> Self {
        addr.map_or(Self::Everyone, Self::Client)
    }

    fn addr(self) -> Option<IpAddr> {
        match self {
            Self::Client(a) => Some(a),
            Self::Everyone => None,
        }
    }
}

impl RoutingTable {
    /// The endpoint's state as routing acts on it, for `viewer` (see the module doc).
    pub fn effective_state(
        &self,
        ep: &Endpoint,
        health: &HealthSnapshot,
        viewer: Viewer,
    ) -> MonitorState {
        self.effective_state_at(ep, health, viewer, 0)
    }

    /// [`Self::effective_state`] at nesting depth `depth` (nesting deeper than [`MAX_DEPTH`]
    /// counts as Degraded: the loader rejects it, this only guards hand-built tables).
    pub(super) fn effective_state_at(
        &self,
        ep: &Endpoint,
        health: &HealthSnapshot,
        viewer: Viewer,
        depth: usize,
    ) -> MonitorState {
        if !ep.enabled {
            return MonitorState::Disabled;
        }
        let h = health.get(&ep.key);
        if let Some(f) = force_for(h, viewer) {
            return match f.action {
                ForceAction::Down => MonitorState::ForcedDown,
                ForceAction::Up => MonitorState::ForcedUp,
            };
        }
        match &ep.target {
            Target::Nested(c) => {
                if depth >= MAX_DEPTH {
                    return MonitorState::Degraded;
                }
                let child = &self.profiles[*c];
                let (mut all, mut v4, mut v6) = (0, 0, 0);
                for e in &child.endpoints {
                    if self
                        .effective_state_at(e, health, viewer, depth + 1)
                        .serves()
                    {
                        all += 1;
                        v4 += usize::from(self.eligible(e, Family::V4));
                        v6 += usize::from(self.eligible(e, Family::V6));
                    }
                }
                if all >= ep.min_child && v4 >= ep.min_child_v4 && v6 >= ep.min_child_v6 {
                    MonitorState::Online
                } else {
                    MonitorState::Degraded
                }
            }
            _ => h.state,
        }
    }

    /// Whether profile `p` fails open for everyone (operator views: metrics, the map, the
    /// prober's log): for some family the profile answers, no endpoint is served and some are
    /// `Degraded`, so those are served anyway — the same candidate rule `select` applies.
    pub fn fails_open(&self, p: usize, health: &HealthSnapshot) -> bool {
        let profile = &self.profiles[p];
        let states: Small<MonitorState> = profile
            .endpoints
            .iter()
            .map(|e| self.effective_state(e, health, Viewer::Everyone))
            .collect();
        [Family::V4, Family::V6, Family::Any]
            .into_iter()
            .any(|f| profile.can_answer[f.index()] && self.candidates(profile, f, &states).1)
    }

    /// Every endpoint of every profile with its profile index (operator views).
    pub fn endpoints(&self) -> impl Iterator<Item = (usize, &Endpoint)> {
        self.profiles
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.endpoints.iter().map(move |e| (i, e)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::geo::Catalogue;
    use crate::health::{EndpointHealth, Force};
    use crate::locate::Location;
    use crate::routing::model::Model;
    use crate::routing::profile::{compute_capabilities, load_profiles};
    use crate::routing::{Client, Measured};
    use crate::zone::load_zone_text;

    const ZONE: &str =
        "$ORIGIN t.\n$TTL 60\n@ IN SOA ns.t. h.t. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n";

    /// `top` has a leaf endpoint and a nested one; each is enabled or not (`-off` suffix).
    const PROFILES: &str = r#"
[[profile]]
name = "child"
method = "priority"
[[profile.endpoint]]
name = "a"
targets = ["192.0.2.11"]
[[profile.endpoint]]
name = "b"
targets = ["192.0.2.12"]

[[profile]]
name = "top"
method = "priority"
[[profile.endpoint]]
name = "leaf"
targets = ["192.0.2.1"]
[[profile.endpoint]]
name = "leaf-off"
targets = ["192.0.2.2"]
enabled = false
[[profile.endpoint]]
name = "nest"
profile = "child"
min_child_endpoints = 1
[[profile.endpoint]]
name = "nest-off"
profile = "child"
enabled = false
"#;

    fn table() -> RoutingTable {
        let zone = load_zone_text(Path::new("zones/t.zone"), ZONE).unwrap();
        let cat = Catalogue::load(None).unwrap();
        let mut p = load_profiles(&zone, Path::new("zones/t.toml"), PROFILES, &cat, 0).unwrap();
        compute_capabilities(&mut p);
        RoutingTable::new(p, Model::default(), Measured::default())
    }

    #[derive(Debug, Clone, Copy)]
    enum F {
        None,
        Down,
        Up,
        /// Down, scoped to the client's network.
        DownIn,
        /// Down, scoped to another network.
        DownOut,
        /// Up, scoped to the client's network.
        UpIn,
    }

    fn force(f: F) -> Option<Arc<Force>> {
        let (action, scope) = match f {
            F::None => return None,
            F::Down => (ForceAction::Down, vec![]),
            F::Up => (ForceAction::Up, vec![]),
            F::DownIn => (ForceAction::Down, vec!["198.51.100.0/24".parse().unwrap()]),
            F::DownOut => (ForceAction::Down, vec!["203.0.113.0/24".parse().unwrap()]),
            F::UpIn => (ForceAction::Up, vec!["198.51.100.0/24".parse().unwrap()]),
        };
        Some(Arc::new(Force {
            action,
            scope,
            reason: "test".into(),
            until: None,
        }))
    }

    /// The table test the rule is specified by: enabled × forced (none, scoped in/out,
    /// unscoped; up, down) × probe state × leaf/nested, for a client inside the scoped
    /// networks and for everyone. For nested endpoints the probe state is their children's.
    #[test]
    fn the_effective_state_table() {
        use MonitorState::*;
        let t = table();
        let top = t.find_profile("top").unwrap();
        let client = Viewer::Client("198.51.100.7".parse().unwrap());
        let mut rows = 0;
        for enabled in [true, false] {
            for nested in [false, true] {
                let name = match (nested, enabled) {
                    (false, true) => "leaf",
                    (false, false) => "leaf-off",
                    (true, true) => "nest",
                    (true, false) => "nest-off",
                };
                let ep = t.profiles[top]
                    .endpoints
                    .iter()
                    .find(|e| e.name == name)
                    .unwrap();
                for probe in [CheckingEndpoint, Online, Degraded, Unmonitored] {
                    for f in [F::None, F::Down, F::Up, F::DownIn, F::DownOut, F::UpIn] {
                        let mut h = HealthSnapshot::default();
                        let probed = |state| EndpointHealth {
                            state,
                            ..Default::default()
                        };
                        if nested {
                            h.set("child.t./a", probed(probe));
                            h.set("child.t./b", probed(probe));
                        } else {
                            h.set(&ep.key, probed(probe));
                        }
                        let mut own = h.get(&ep.key).clone();
                        own.forced = force(f)
                            .into_iter()
                            .map(|f| (ForceOrigin::Endpoint, f))
                            .collect();
                        h.set(&ep.key, own);
                        // Expected, row by row: configuration, then forces for the viewer,
                        // then children (nested) or probes.
                        let by_probe = if nested {
                            if probe.serves() { Online } else { Degraded }
                        } else {
                            probe
                        };
                        let for_client = match (enabled, f) {
                            (false, _) => Disabled,
                            (true, F::Down | F::DownIn) => ForcedDown,
                            (true, F::Up | F::UpIn) => ForcedUp,
                            (true, F::None | F::DownOut) => by_probe,
                        };
                        let for_everyone = match (enabled, f) {
                            (false, _) => Disabled,
                            (true, F::Down) => ForcedDown,
                            (true, F::Up) => ForcedUp,
                            (true, _) => by_probe,
                        };
                        let what = format!("{name} probe {probe:?} force {f:?}");
                        assert_eq!(t.effective_state(ep, &h, client), for_client, "{what}");
                        assert_eq!(
                            t.effective_state(ep, &h, Viewer::Everyone),
                            for_everyone,
                            "{what} (everyone)"
                        );
                        // Routing's own trace shows the same state for that client.
                        let c = Client {
                            loc: Location {
                                addr: Some("198.51.100.7".parse().unwrap()),
                                ..Default::default()
                            },
                            ecs_source: None,
                        };
                        let mut x = crate::routing::Explain::default();
                        t.select(top, Family::V4, &c, &h, Some(&mut x));
                        let shown = x.levels[0]
                            .endpoints
                            .iter()
                            .find(|e| e.name == name)
                            .unwrap()
                            .state;
                        assert_eq!(shown, for_client, "{what} (explain)");
                        rows += 1;
                    }
                }
            }
        }
        assert_eq!(rows, 2 * 2 * 4 * 6);
    }
}
