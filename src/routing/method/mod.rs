//! The routing methods, one file each, all behind one signature.
//!
//! Every method is a function
//!
//! ```text
//! fn pick<'a>(cx: &Ctx<'a>, estimates: &mut [Option<Estimate>]) -> (Small<usize>, Why<'a>, Scope)
//! ```
//!
//! and [`pick`] is the single `match` that calls it (gdnsd's model: one `resolve` per method
//! plugin). The signature is the whole contract, and it is narrow on purpose:
//!
//! - **One decision per method.** Everything methods share — which endpoints are candidates
//!   (eligible for the family, served, fail-open, recovery ramp), following nested profiles,
//!   collecting records, TTL, the ECS scope cap, the explanation trace — happens once, in
//!   [`RoutingTable::select`](super::RoutingTable::select). A method only chooses among the
//!   non-empty `cx.cands` and says how widely its choice holds ([`Scope`]), so a new method
//!   cannot get failover or scoping subtly different from the others.
//! - **Pure.** Inputs are the immutable table snapshot, the health snapshot and the client; the
//!   only output besides the return value is `estimates` (the latency terms `performance`
//!   computed, for `explain`). The exception is non-sticky `weighted`, which rolls a random
//!   number, as Traffic Manager does.
//! - **No allocation, no dynamic dispatch on the answer path.** Picks are a [`Small`] (inline up
//!   to eight); the decision text is a [`Why`] that is formatted only when `explain`/`_why`
//!   asks for it (`cx.want`), and is otherwise a zero-sized closure whose box allocates
//!   nothing (its `dyn Fn` is called only to explain). Dispatch is a `match` on [`Method`],
//!   not a trait object; it and the methods are `#[inline]`, so they may still be inlined into
//!   `select_into` across codegen units, as when they were one function of that module.

mod geographic;
mod multivalue;
mod performance;
mod priority;
mod subnet;
mod weighted;

use super::model::Estimate;
use super::{Client, Endpoint, Family, Method, Profile, RoutingTable, Scope, Small};
use crate::health::HealthSnapshot;

/// What a method decides from: one profile level of one query.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    /// The whole table (the latency model, measured RTTs, nested profiles' capabilities).
    pub(super) table: &'a RoutingTable,
    /// The profile being decided.
    pub(super) profile: &'a Profile,
    /// Indices into `profile.endpoints` that may be chosen, in profile order; never empty
    /// when a method is called.
    pub(super) cands: &'a [usize],
    /// Address family asked for.
    pub(super) family: Family,
    /// The client.
    pub(super) client: &'a Client,
    /// Health, load and probe RTTs.
    pub(super) health: &'a HealthSnapshot,
    /// Whether the decision text will be read (`explain`, `_why`); when not, methods must not
    /// format it.
    pub(super) want: bool,
}

/// A decision's text, formatted only when someone reads it.
pub(super) type Why<'a> = Box<dyn Fn() -> String + 'a>;

/// `text` as a [`Why`] when `want`, else an empty one. Answers do not read the text, only
/// `explain` and `_why` do; the empty one is a zero-sized closure, so boxing it allocates
/// nothing (a capturing closure would cost an allocation per routed query).
#[inline]
pub(super) fn lazy<'a>(want: bool, text: impl Fn() -> String + 'a) -> Why<'a> {
    if want {
        Box::new(text)
    } else {
        Box::new(String::new)
    }
}

/// Applies the profile's method to the candidates. Returns the chosen endpoint indices, a
/// lazily formatted decision text (empty unless `cx.want`: see [`lazy`]), and how widely the
/// decision holds.
#[inline]
pub(super) fn pick<'a>(
    cx: &Ctx<'a>,
    estimates: &mut [Option<Estimate>],
) -> (Small<usize>, Why<'a>, Scope) {
    if cx.cands.is_empty() {
        return (
            Small::new(),
            lazy(cx.want, || "no candidate: empty answer".into()),
            Scope::Global,
        );
    }
    match cx.profile.method {
        Method::Performance => performance::pick(cx, estimates),
        Method::Priority => priority::pick(cx, estimates),
        Method::Weighted => weighted::pick(cx, estimates),
        Method::Geographic => geographic::pick(cx, estimates),
        Method::Multivalue => multivalue::pick(cx, estimates),
        Method::Subnet => subnet::pick(cx, estimates),
    }
}

/// The endpoint's settings that matter to `method`, for `explain` (weight, priority, geo
/// codes, subnets, capacity).
pub(super) fn detail(method: Method, e: &Endpoint) -> String {
    match method {
        Method::Performance => performance::detail(e),
        Method::Priority => priority::detail(e),
        Method::Weighted => weighted::detail(e),
        Method::Geographic => geographic::detail(e),
        Method::Multivalue => multivalue::detail(e),
        Method::Subnet => subnet::detail(e),
    }
}
