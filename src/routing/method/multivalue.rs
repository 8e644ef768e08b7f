//! `multivalue`: Traffic Manager's MultiValue routing — up to `max_answers` served endpoints, in
//! profile order, all in one answer, so the client can fail over by itself (scope 0).

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Endpoint, Scope, Small};

/// The `multivalue` decision (see [`super::pick`] for the contract).
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
    let picked: Small<usize> = cands.iter().copied().take(profile.max_answers).collect();
    let n = picked.len();
    let max = profile.max_answers;
    (
        picked,
        lazy(want, move || {
            format!("{n} served endpoint(s), at most {max}")
        }),
        Scope::Global,
    )
}

/// Nothing per endpoint matters to `multivalue`.
pub(super) fn detail(_: &Endpoint) -> String {
    String::new()
}
