//! `subnet`: Traffic Manager's Subnet routing — client address ranges map to endpoints; the
//! served endpoint with the longest range containing the client answers (ties: the earlier
//! endpoint), else the served endpoint without ranges (the fallback), else an empty answer.
//! Scope: the source prefix.

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Endpoint, Scope, Small};

/// The `subnet` decision (see [`super::pick`] for the contract).
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
    let addr = client.loc.addr;
    let matched = cands
        .iter()
        .filter_map(|&i| {
            eps[i]
                .subnets
                .iter()
                .filter(|n| addr.is_some_and(|a| n.contains(&a)))
                .map(|n| n.prefix_len())
                .max()
                .map(|len| (i, len))
        })
        .max_by_key(|(i, len)| (*len, std::cmp::Reverse(*i)));
    if let Some((i, len)) = matched {
        let name = &eps[i].name;
        return (
            smallvec::smallvec![i],
            lazy(want, move || format!("{name}: client in its /{len} range")),
            Scope::Source,
        );
    }
    match cands.iter().copied().find(|&i| eps[i].subnets.is_empty()) {
        Some(i) => {
            let name = &eps[i].name;
            (
                smallvec::smallvec![i],
                lazy(want, move || {
                    format!("{name}: no range matched; fallback endpoint")
                }),
                Scope::Source,
            )
        }
        None => (
            Small::new(),
            lazy(want, || {
                "no range matched and no fallback: empty answer".into()
            }),
            Scope::Source,
        ),
    }
}

/// The endpoint's ranges, or `fallback`.
pub(super) fn detail(e: &Endpoint) -> String {
    if e.subnets.is_empty() {
        "fallback".into()
    } else {
        e.subnets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}
