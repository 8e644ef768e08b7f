//! `priority`: Traffic Manager's Priority routing — ordered failover. The served endpoint with
//! the lowest priority number answers; the same for every client (scope 0).

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Endpoint, Scope, Small};

/// The `priority` decision (see [`super::pick`] for the contract).
#[inline]
pub(super) fn pick<'a>(
    cx: &Ctx<'a>,
    _estimates: &mut [Option<Estimate>],
) -> (Small<usize>, Why<'a>, Scope) {
    let Ctx {
        profile,
        cands,
        want,
        ..
    } = *cx;
    let eps = &profile.endpoints;
    let i = cands
        .iter()
        .copied()
        .min_by_key(|&i| (eps[i].priority, i))
        .unwrap_or(cands[0]);
    let (name, prio) = (&eps[i].name, eps[i].priority);
    (
        smallvec::smallvec![i],
        lazy(want, move || {
            format!("{name}: lowest priority {prio} among served")
        }),
        Scope::Global,
    )
}

/// The endpoint's priority.
pub(super) fn detail(e: &Endpoint) -> String {
    format!("priority {}", e.priority)
}
