//! Probing: the tasks that measure endpoints and publish [`crate::health::HealthSnapshot`]s.
//!
//! [`probe`] runs one probe (tcp, http(s), mqtt(s)) and owns the TLS clients
//! ([`probe::TlsRegistry`]); [`prober`] schedules probes per endpoint, applies the anti-flap
//! state machine ([`crate::health::state`]) and forced states, and publishes; [`load`] polls
//! broker load sources. It sits above routing: it reads the routing table to know what to probe.

pub mod load;
pub mod probe;
pub mod prober;
