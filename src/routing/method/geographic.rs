//! `geographic`: Traffic Manager's Geographic routing — geo codes (`WORLD`, continent,
//! country, subdivision) map to endpoints and the most specific code matching the client's
//! location wins.
//!
//! Unlike Traffic Manager, when that endpoint is not served the next less specific match
//! answers; `geo_strict = true` restores Traffic Manager's behaviour (the most specific mapping
//! is final: not served → empty answer, for data residency). No match → empty answer. Scope:
//! the client's GeoIP network.

use super::{Ctx, Why, lazy};
use crate::routing::model::Estimate;
use crate::routing::{Client, Endpoint, GeoCode, Scope, Small};

/// The `geographic` decision (see [`super::pick`] for the contract).
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
    // Strict: the most specific mapping among *all* endpoints decides; if its
    // endpoint is not a candidate (down, disabled), nothing is answered.
    let strict_best = profile
        .geo_strict
        .then(|| most_specific(eps, client, 0..eps.len()));
    if let Some(Some((i, g))) = strict_best
        && !cands.contains(&i)
    {
        let name = &eps[i].name;
        return (
            Small::new(),
            lazy(want, move || {
                format!(
                    "{name} (most specific match {g}) is not served and geo_strict \
                     forbids a fallback: empty answer"
                )
            }),
            Scope::GeoNetwork,
        );
    }
    let best = most_specific(eps, client, cands.iter().copied());
    match best {
        Some((i, g)) => {
            let name = &eps[i].name;
            (
                smallvec::smallvec![i],
                lazy(want, move || format!("{name}: most specific match {g}")),
                Scope::GeoNetwork,
            )
        }
        None => (
            Small::new(),
            lazy(want, || {
                "no served endpoint maps the client's location: empty answer".into()
            }),
            Scope::GeoNetwork,
        ),
    }
}

/// Among `among`, the endpoint whose geo mapping matches the client most specifically (ties:
/// the earlier endpoint), with that mapping.
fn most_specific(
    eps: &[Endpoint],
    client: &Client,
    among: impl Iterator<Item = usize>,
) -> Option<(usize, GeoCode)> {
    among
        .filter_map(|i| {
            eps[i]
                .geo
                .iter()
                .filter(|g| g.matches(&client.loc))
                .max_by_key(|g| g.specificity())
                .map(|g| (i, *g))
        })
        .max_by_key(|(i, g)| (g.specificity(), std::cmp::Reverse(*i)))
}

/// The endpoint's geo codes.
pub(super) fn detail(e: &Endpoint) -> String {
    e.geo
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
