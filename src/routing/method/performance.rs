//! `performance`: Traffic Manager's Performance routing — the endpoint with the lowest
//! estimated latency for the client.
//!
//! Traffic Manager ranks endpoints by its Internet latency table for the client's network; here
//! the estimate is [`Model::estimate`](crate::routing::model::Model::estimate): distance (or an
//! operator-measured RTT) plus the endpoint's probe-RTT excess. On top of that, for long-lived
//! MQTT sessions (see README "Capacity-aware spill-over and stable rankings"):
//!
//! - **Hysteresis**: a client network stays on its *anchor* (nearest by distance or measured
//!   RTT) unless another endpoint beats it by both `stability` margins.
//! - **Capacity**: above `high_water` a growing, hash-chosen share of client networks spills
//!   to endpoints with headroom; at or above `hard_limit` an endpoint is a last resort; a
//!   failed home's clients are spread by headroom and latency rather than all sent to the
//!   next-nearest.
//! - **Unknown location**: lowest probe RTT, then profile order (never an empty answer).
//!
//! Scope: the client's GeoIP network, or the source prefix when measured client networks or
//! load data make the decision finer than that.

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Endpoint, Scope, Small, rendezvous, unit_hash};

/// The `performance` decision (see [`super::pick`] for the contract).
#[inline]
pub(super) fn pick<'a>(
    cx: &Ctx<'a>,
    estimates: &mut [Option<Estimate>],
) -> (Small<usize>, Why<'a>, Scope) {
    let Ctx {
        table,
        profile,
        cands,
        family,
        client,
        health,
        want,
    } = *cx;
    let eps = &profile.endpoints;
    // Fleet mode: the model's RTT from the client to each vantage point (the instances'
    // locations), for estimates through the fleet's measured RTT matrix. Empty standalone.
    let vantages = &health.vantages;
    let to_vantage: Small<f64> = match client.loc.point {
        Some(c) if !vantages.points.is_empty() => vantages
            .points
            .iter()
            .map(|(_, p)| table.model.rtt_for_km(c.distance_km(p)))
            .collect(),
        _ => Small::new(),
    };
    // Measured steering applies to all candidates or none: a path through a vantage is an
    // upper bound (client → vantage → endpoint), never below the model's direct estimate, so
    // mixing the two kinds would favour whichever endpoint no vantage measures.
    let via = |i: usize| -> Option<(u16, f64)> {
        vantages
            .rtt
            .get(&eps[i].key)?
            .iter()
            .filter_map(|&(j, ms)| Some((j, to_vantage.get(usize::from(j))? + ms)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let measured_steering = !to_vantage.is_empty() && cands.iter().all(|&i| via(i).is_some());
    for &i in cands {
        let h = health.get(&eps[i].key);
        let measured = table.measured.lookup(&client.loc, eps[i].region.as_deref());
        // Ranking uses the held RTT (hysteresis), not every probe's wobble.
        let rtt = h.rank_rtt_ms.or(h.rtt_ms);
        let mut estimate = table
            .model
            .estimate(client.loc.point, eps[i].point, rtt, measured);
        // Measured steering: client → vantage (model) + vantage → endpoint (that vantage's
        // probe RTT), the shortest such path over the vantages that measure the endpoint —
        // the nearest vantage's in the usual case. An operator-measured RTT for the client's
        // network still wins; without vantage data for every candidate: distance + excess, as
        // standalone.
        if measured_steering
            && measured.is_none()
            && let Some(v) = via(i)
        {
            estimate.total_ms = Some(v.1);
            estimate.excess_ms = 0.0;
            estimate.via = Some(v);
        }
        estimates[i] = Some(estimate);
    }
    let total = |i: usize| estimates[i].and_then(|e| e.total_ms);
    // Distance (or measured) only: the client's natural home, immune to RTT noise.
    let path = |i: usize| estimates[i].and_then(|e| e.measured_ms.or(e.distance_ms));
    let mut scope = if table.measured.networks.is_empty() {
        Scope::GeoNetwork
    } else {
        Scope::Source
    };
    if cands.iter().any(|&i| total(i).is_some()) {
        let load = |i: usize| eps[i].capacity.as_ref().zip(health.get(&eps[i].key).load);
        // Above the hard mark: last resort only.
        let pool: Small<usize> = {
            let ok: Small<usize> = cands
                .iter()
                .copied()
                .filter(|&i| load(i).is_none_or(|(c, r)| r < c.hard_limit))
                .collect();
            if ok.is_empty() {
                Small::from_slice(cands)
            } else {
                ok
            }
        };
        let argmin = |f: &dyn Fn(usize) -> Option<f64>, set: &[usize]| {
            set.iter()
                .copied()
                .filter_map(|i| f(i).map(|v| (i, v)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        };
        let Some((best, best_ms)) = argmin(&total, &pool) else {
            return (
                smallvec::smallvec![pool[0]],
                lazy(want, || "no estimate".into()),
                scope,
            );
        };
        let anchor = argmin(&path, &pool).map_or(best, |a| a.0);
        let st = &profile.stability;
        let anchor_ms = total(anchor).unwrap_or(best_ms);
        let gain = anchor_ms - best_ms;
        let beats = gain >= st.margin_ms && gain >= anchor_ms * st.margin_pct / 100.0;
        let mut chosen = if best == anchor || beats {
            best
        } else {
            anchor
        };
        // The decision text is only built for `explain`/`_why`: formatting its
        // floats would cost more than the whole choice.
        macro_rules! text {
            ($($t:tt)*) => { if want { format!($($t)*) } else { String::new() } };
        }
        let mut why: String = if chosen == anchor && best != anchor {
            text!(
                "{}: hysteresis held it ({} would be {gain:.1} ms better; margin {} ms and {} %)",
                eps[anchor].name,
                eps[best].name,
                st.margin_ms,
                st.margin_pct
            )
        } else {
            text!(
                "{}: lowest estimate {:.1} ms",
                eps[chosen].name,
                total(chosen).unwrap_or(best_ms)
            )
        };
        // Capacity: spread a failed home's clients, spill from a busy endpoint.
        let headroom = |i: usize| {
            load(i).and_then(|(c, r)| {
                let room = (c.high_water - r) * c.capacity;
                (room > 0.0).then_some(room)
            })
        };
        let spread = |exclude: Option<usize>, salt: &str| -> Option<usize> {
            let set: Small<(usize, f64)> = pool
                .iter()
                .copied()
                .filter(|&i| Some(i) != exclude)
                .filter_map(|i| {
                    let room = headroom(i)?;
                    let ms = total(i)?.max(1.0);
                    Some((i, room / (ms * ms)))
                })
                .collect();
            rendezvous(client, salt, set.iter().map(|&(i, w)| (i, &*eps[i].key, w)))
        };
        let any_load = pool.iter().any(|&i| load(i).is_some());
        if any_load {
            scope = Scope::Source;
        }
        // Home: where the client would go with every endpoint healthy (the estimate of
        // endpoints that are not candidates is computed here, on demand). Only capacity
        // spreading asks for it, so without load data it is not computed at all.
        let home = if any_load {
            let all_eligible: Small<usize> = (0..eps.len())
                .filter(|&i| eps[i].enabled && table.eligible(&eps[i], family))
                .collect();
            let path_any = |i: usize| {
                let measured = table.measured.lookup(&client.loc, eps[i].region.as_deref());
                let e = table
                    .model
                    .estimate(client.loc.point, eps[i].point, None, measured);
                e.measured_ms.or(e.distance_ms)
            };
            argmin(&path_any, &all_eligible).map(|h| h.0)
        } else {
            None
        };
        if any_load && home.is_some_and(|h| !pool.contains(&h)) {
            if let Some(i) = spread(None, "spread") {
                let home_name = home.map_or("-", |h| eps[h].name.as_str());
                why = text!(
                    "{}: home {home_name} unavailable; its clients spread by headroom and latency",
                    eps[i].name
                );
                chosen = i;
            }
        } else if let Some((c, r)) = load(chosen)
            && r >= c.high_water
        {
            let p = ((r - c.high_water) / (c.hard_limit - c.high_water)).clamp(0.0, 1.0);
            if unit_hash(client, &format!("spill/{}", eps[chosen].key)) < p
                && let Some(i) = spread(Some(chosen), "spill")
            {
                why = text!(
                    "{}: spilled from {} at {:.0} % load (spill share {:.0} %)",
                    eps[i].name,
                    eps[chosen].name,
                    r * 100.0,
                    p * 100.0
                );
                chosen = i;
            } else {
                why.push_str(&text!(
                    "; at {:.0} % load, {:.0} % of client networks spill",
                    r * 100.0,
                    p * 100.0
                ));
            }
        }
        return (
            smallvec::smallvec![chosen],
            lazy(want, move || why.clone()),
            scope,
        );
    }
    // No location (neither the ECS address nor the resolver's: see
    // `State::locate_client_traced`): the profile's declared order, the first served endpoint
    // in the file — as gdnsd answers unlocatable clients from its declared datacenter order.
    // Probe RTT does not rank here: it measures how far the endpoint is from *this server*, not
    // from the client, and file positions are unique, so it has no tie to break.
    let i = cands.iter().copied().min().unwrap_or(cands[0]);
    let name = &eps[i].name;
    let known = client.loc.is_known();
    (
        smallvec::smallvec![i],
        lazy(want, move || {
            if known {
                format!("{name}: client location has no coordinates; first served in profile order")
            } else {
                format!("{name}: client location unknown; first served in profile order")
            }
        }),
        scope,
    )
}

/// Capacity settings, when a load source is configured.
pub(super) fn detail(e: &Endpoint) -> String {
    match &e.capacity {
        Some(c) => format!(
            "capacity {} (high {:.0} %, hard {:.0} %)",
            c.capacity,
            c.high_water * 100.0,
            c.hard_limit * 100.0
        ),
        None => String::new(),
    }
}
