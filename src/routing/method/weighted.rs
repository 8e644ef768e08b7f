//! `weighted`: Traffic Manager's Weighted routing — each query picks a served endpoint at
//! random with probability proportional to its weight (scope 0).
//!
//! With `sticky = true` (a geosteer extension) the pick is instead weighted rendezvous hashing
//! of the client network (/24, /56) and the profile: still proportional to weight, but one
//! client network keeps its answer, and when an endpoint leaves only its own networks move.
//! Scope: that /24 or /56.

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Endpoint, Scope, Small, fnv, mix};

/// The `weighted` decision (see [`super::pick`] for the contract).
#[inline]
pub(super) fn pick<'a>(
    cx: &Ctx<'a>,
    _estimates: &mut [Option<Estimate>],
) -> (Small<usize>, Why<'a>, Scope) {
    let Ctx {
        profile,
        cands,
        client,
        want,
        ..
    } = *cx;
    let eps = &profile.endpoints;
    let total: u64 = cands.iter().map(|&i| u64::from(eps[i].weight)).sum();
    let (chosen, scope) = if profile.sticky {
        // Weighted rendezvous hashing: each (client network, endpoint) pair gets a
        // score, the highest wins. Proportional to weight, and when an endpoint
        // leaves only its own clients move; the others keep their answer.
        let base = client.sticky_key() ^ fnv(&profile.owner_wire);
        let score = |i: usize| {
            let h = mix(base ^ fnv(eps[i].key.as_bytes()));
            // Uniform in (0, 1), never 0 or 1.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            f64::from(eps[i].weight) / -u.ln()
        };
        let best = cands
            .iter()
            .copied()
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap_or(cands[0]);
        let bits = if client.loc.addr.is_some_and(|a| a.is_ipv4()) {
            24
        } else {
            56
        };
        (best, Scope::Prefix(bits))
    } else {
        let roll = fastrand::u64(0..total.max(1));
        let mut acc = 0;
        let mut chosen = cands[0];
        for &i in cands {
            acc += u64::from(eps[i].weight);
            if roll < acc {
                chosen = i;
                break;
            }
        }
        (chosen, Scope::Global)
    };
    let (name, w, sticky) = (&eps[chosen].name, eps[chosen].weight, profile.sticky);
    (
        smallvec::smallvec![chosen],
        lazy(want, move || {
            format!(
                "{name}: weight {w} of {total}{}",
                if sticky {
                    ", hashed by client subnet"
                } else {
                    ", random"
                }
            )
        }),
        scope,
    )
}

/// The endpoint's weight.
pub(super) fn detail(e: &Endpoint) -> String {
    format!("weight {}", e.weight)
}
