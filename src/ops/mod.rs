//! Operations: metrics, forced states, drills, reload and the admin HTTP API.
//!
//! [`control::Control`] owns every change to what is served (reload, forced states, drills);
//! [`api`] exposes it over HTTP; [`reload`] triggers reloads on SIGHUP and file changes;
//! [`store`] keeps forced states and drills across restarts; [`runtoken`] is the per-run admin
//! token of a loopback API with none configured.

pub mod api;
pub mod control;
pub mod demo;
pub mod drill;
pub mod fleet;
pub mod fleet_sync;

pub mod reload;
pub mod runtoken;
pub mod store;
