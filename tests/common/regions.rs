//! Three loopback addresses standing for three regions' endpoints, and a port free on all of
//! them: tests probe real listeners there (refused when one is closed) and read which region
//! a client is answered.

use std::net::TcpListener;

/// The westeurope endpoint's address.
pub const EU: &str = "127.0.0.11";
/// The eastus endpoint's address.
pub const US: &str = "127.0.0.12";
/// The southeastasia endpoint's address.
pub const ASIA: &str = "127.0.0.13";

/// A port that is free on all three region addresses, with a listener holding it on each
/// (drop one to make its region refuse connections).
pub fn shared_port() -> (u16, [TcpListener; 3]) {
    for _ in 0..50 {
        let a = TcpListener::bind((EU, 0)).unwrap();
        let port = a.local_addr().unwrap().port();
        if let (Ok(b), Ok(c)) = (
            TcpListener::bind((US, port)),
            TcpListener::bind((ASIA, port)),
        ) {
            return (port, [a, b, c]);
        }
    }
    panic!("no port free on all three loopback addresses");
}
