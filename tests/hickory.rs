//! The handler also runs inside hickory-server's own `Server` (through `HickoryHandler`); both
//! paths must give the same answers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::*;
use geosteer::dns::Handler;
use geosteer::dns::hickory::HickoryHandler;
use geosteer::health::HealthSnapshot;

#[test]
fn hickory_server_path_matches_the_native_path() {
    let native = Server::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loaded = geosteer::app::load(Some(&repo().join("geosteer.toml"))).unwrap();
    let handler = Arc::new(Handler::new(
        Arc::new(ArcSwap::from_pointee(loaded.state)),
        Arc::new(ArcSwap::from_pointee(HealthSnapshot::default())),
        Arc::new(geosteer::metrics::Metrics::default()),
        1232,
    ));
    let (addr, _server) = rt.block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind(udp.local_addr().unwrap())
            .await
            .unwrap();
        let addr = udp.local_addr().unwrap();
        let mut server = hickory_server::Server::new(HickoryHandler(handler));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 65535);
        (addr, server)
    });
    let cases: &[&[&str]] = &[
        &["WwW.example.test", "A"],
        &["nope.example.test", "A"],
        &["b.deep.example.test", "A"],
        &["evilexample.test", "A"],
        &["www.example.test", "+subnet=81.2.69.0/24"],
        &["big.example.test", "TXT", "+noedns", "+ignore"],
        &["big.example.test", "TXT", "+tcp"],
        &["example.test", "ANY"],
        &["host.sub.example.test", "A"],
        &["mqtt.example.test", "A", "+subnet=81.2.69.0/24"],
        &["mqtt.example.test", "AAAA", "+subnet=1.0.16.0/24"],
        &["mqtt-lb.example.test", "A"],
    ];
    for args in cases {
        let a = native.dig(args);
        let b = dig_at(addr, args);
        assert_eq!(a.status, b.status, "{args:?}\n{}\n{}", a.raw, b.raw);
        assert_eq!(a.flags, b.flags, "{args:?}");
        assert_eq!(a.question, b.question, "{args:?}");
        assert_eq!(a.answer, b.answer, "{args:?}");
        assert_eq!(a.authority, b.authority, "{args:?}");
        assert_eq!(a.additional, b.additional, "{args:?}");
        assert_eq!(a.client_subnet, b.client_subnet, "{args:?}");
    }
}
