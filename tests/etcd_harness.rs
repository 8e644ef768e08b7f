//! The etcd test harness itself (tests/common/etcd.rs): a real 3-member cluster on loopback
//! replicates writes, keeps serving with 2 of 3 members, refuses writes with 1 of 3, recovers
//! when members restart, and leaves no process behind.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;

/// Client timeout for a write that should succeed at once.
const WRITE: Duration = Duration::from_secs(5);

/// Polls `f` until it returns `Ok`, for at most `within`; panics with the last error.
fn poll_ok<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: still failing: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The client port of an endpoint URL.
fn port(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn three_members_replicate_and_leave_nothing_behind() {
    let c = EtcdCluster::start(3);
    assert!((0..3).all(|i| c.healthy(i)), "every member healthy");
    assert!(c.leader().is_some(), "a leader after start");

    let eps = c.endpoints();
    assert_eq!(eps.len(), 3);
    for e in &eps {
        assert!(e.starts_with("http://127.0.0.1:"), "{e}");
    }
    let mut ports: Vec<u16> = eps.iter().map(|e| port(e)).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct client ports: {eps:?}");
    let parsed: toml::Table =
        toml::from_str(&format!("endpoints = {}", c.toml_endpoints())).unwrap();
    let from_toml: Vec<&str> = parsed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(from_toml, eps);

    // Written through member 0, read (linearizably) through member 2.
    let rev = c.put_via(0, "geosteer/k", "v1", WRITE).unwrap();
    assert!(rev > 1, "revision {rev}");
    assert_eq!(
        c.get_via(2, "geosteer/k", WRITE).unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(c.get("geosteer/k").as_deref(), Some("v1"));
    assert_eq!(c.get("geosteer/absent"), None);
    let rev2 = c.put_via(1, "geosteer/k", "v2", WRITE).unwrap();
    assert!(rev2 > rev, "{rev2} > {rev}");
    assert_eq!(
        c.get_via(0, "geosteer/k", WRITE).unwrap().as_deref(),
        Some("v2")
    );

    // The hand-written base64 through a real etcd: every padding length, and non-ASCII.
    let values = [
        "",
        "a",
        "ab",
        "abc",
        "abcd",
        "abcde",
        "abcdef",
        "Zürich → 東京",
    ];
    for (n, v) in values.iter().enumerate() {
        c.put_via(n % 3, &format!("b64/{n}"), v, WRITE).unwrap();
    }
    for (n, v) in values.iter().enumerate() {
        assert_eq!(c.get(&format!("b64/{n}")).as_deref(), Some(*v), "value {n}");
    }

    // A prefix's range stops right before the prefix's last byte + 1 ("geosteer0" for
    // "geosteer/"), and takes keys in byte order.
    c.put_via(2, "geosteer0", "outside", WRITE).unwrap();
    c.put_via(2, "geosteer/z", "inside", WRITE).unwrap();
    c.put_via(2, "geosteer/a/1", "inside", WRITE).unwrap();
    c.put_via(2, "geosteer.", "outside", WRITE).unwrap();
    assert_eq!(
        c.keys("geosteer/"),
        ["geosteer/a/1", "geosteer/k", "geosteer/z"]
    );
    assert_eq!(c.keys("b64/").len(), values.len());
    assert!(c.keys("nothing/").is_empty());

    // Dropping the cluster kills and reaps every member: nothing listens any more.
    drop(c);
    for e in &eps {
        let addr = SocketAddr::from(([127, 0, 0, 1], port(e)));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "{e} still accepts connections after drop"
        );
    }
}

#[test]
fn quorum_two_of_three_serves_one_of_three_refuses_and_restarts_recover() {
    let mut c = EtcdCluster::start(3);
    c.put_via(0, "q/before", "1", WRITE).unwrap();

    // Kill the leader: the other two elect a new one and keep serving reads and writes.
    let first = c.leader().expect("a leader");
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let (a, b) = (rest[0], rest[1]);
    c.stop(first);
    assert!(!c.healthy(first));
    // A write forwarded to the dead leader is lost until the election ends: retry with a short
    // client timeout until one goes through.
    poll_ok(Duration::from_secs(15), "write with 2 of 3", || {
        c.put_via(a, "q/two", "2", Duration::from_secs(1))
    });
    assert_eq!(c.get_via(b, "q/two", WRITE).unwrap().as_deref(), Some("2"));
    c.put_via(b, "q/two-b", "2b", WRITE).unwrap();
    assert_eq!(
        c.get_via(a, "q/two-b", WRITE).unwrap().as_deref(),
        Some("2b")
    );
    assert!(c.healthy(a) && c.healthy(b));
    let second_leader = c.leader().expect("a new leader among the two");
    assert_ne!(second_leader, first);

    // Kill a second member: the last one has no quorum, so writes through it fail.
    c.stop(a);
    let started = Instant::now();
    let refused = c.put_via(b, "q/no-quorum", "x", Duration::from_secs(2));
    eprintln!(
        "write with 1 of 3 answered after {:?}: {refused:?}",
        started.elapsed()
    );
    assert!(
        refused.is_err(),
        "a write without quorum succeeded: {refused:?}"
    );
    assert!(
        c.get_via(b, "q/before", Duration::from_secs(2)).is_err(),
        "a linearizable read without quorum succeeded"
    );
    assert!(!c.healthy(b), "the lone member reports healthy");

    // Restart one member: quorum again (2 of 3), writes succeed at once.
    c.restart(first);
    assert!(c.healthy(first) && c.healthy(b));
    c.put_via(b, "q/recovered", "3", WRITE).unwrap();
    c.put_via(first, "q/recovered-first", "3f", WRITE).unwrap();

    // Restart the other: all three healthy, one leader, everything written is everywhere.
    c.restart(a);
    assert!((0..3).all(|i| c.healthy(i)));
    poll_ok(Duration::from_secs(10), "one leader among three", || {
        c.leader().ok_or_else(|| "no agreed leader".to_string())
    });
    for (key, value) in [
        ("q/before", "1"),
        ("q/two", "2"),
        ("q/two-b", "2b"),
        ("q/recovered", "3"),
        ("q/recovered-first", "3f"),
    ] {
        for i in 0..3 {
            assert_eq!(
                c.get_via(i, key, WRITE).unwrap().as_deref(),
                Some(value),
                "{key} via member {i}"
            );
        }
    }
    c.put_via(a, "q/all", "4", WRITE).unwrap();
    assert_eq!(
        c.get_via(first, "q/all", WRITE).unwrap().as_deref(),
        Some("4")
    );
    // Whether the refused write was applied later depends on whether the lone member had
    // appended it to its log as leader; only report it.
    eprintln!("q/no-quorum after recovery: {:?}", c.get("q/no-quorum"));
}
