//! The DNS front end: wire format, the request handler and the UDP/TCP transports.
//!
//! `wire` parses queries strictly and encodes answers; `handler` decides the answer from an
//! immutable zone snapshot; `server` owns sockets and connection limits; `hickory` adapts the
//! handler to hickory-server's `RequestHandler` trait for embedding in a `hickory_server::Server`.

pub mod cache;
pub mod conn_limit;
pub mod handler;
pub mod hickory;
pub mod routed_cache;
pub mod rrl;
pub mod server;

pub use handler::{Handler, Transport};
