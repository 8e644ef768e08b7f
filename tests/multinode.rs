//! Several independent geosteer replicas behind a real recursive resolver, as in production:
//! three instances (one per "region", each on its own loopback address) serve the same zone
//! and probe the same three regional endpoints for themselves; Debian's `unbound` resolves
//! through them as the zone's name servers, forwarding the clients' EDNS Client Subnet.
//!
//! - resolution through unbound is geo-correct for a London, a US and a Tokyo client;
//! - killing one instance: unbound retries the others, answers stay correct;
//! - killing the EU endpoint: every remaining instance moves its London answer to the US
//!   region (asked directly), and so does resolution through unbound.
//!
//! Only processes this test started are stopped, by their PIDs. Every wait is a poll with a
//! deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::regions::{ASIA, EU, US, shared_port};
use common::*;

/// The regional endpoints (what EMQX's load balancers are in production).
/// The geosteer instances, one per region, and the region each runs in.
const INSTANCES: [(&str, &str); 3] = [
    ("127.0.0.21", "azure:westeurope"),
    ("127.0.0.22", "azure:eastus"),
    ("127.0.0.23", "azure:southeastasia"),
];
/// Client networks (geo/sample-networks.csv) and the endpoint each should get.
const LONDON: &str = "81.2.69.0/24";
const SEATTLE: &str = "216.160.83.0/24";
const TOKYO: &str = "1.0.16.0/24";

/// The zone every instance serves: NS records for the three instances, and a performance
/// profile over the three endpoints, monitored with TCP probes.
fn write_zone(dir: &Path, port: u16) -> PathBuf {
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    let mut zone = String::from(
        "$ORIGIN example.test.\n$TTL 60\n\
         @ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 30\n",
    );
    for (i, (addr, _)) in INSTANCES.iter().enumerate() {
        zone.push_str(&format!(
            "@ IN NS ns{n}.example.test.\nns{n} IN A {addr}\n",
            n = i + 1
        ));
    }
    zone.push_str("www IN A 192.0.2.10\n");
    std::fs::write(zones.join("example.test.zone"), zone).unwrap();
    std::fs::write(
        zones.join("example.test.toml"),
        format!(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n\
             [profile.monitor]\nprotocol = \"tcp\"\nport = {port}\ninterval = \"1s\"\n\
             [[profile.endpoint]]\nname = \"westeurope\"\nregion = \"azure:westeurope\"\ntargets = [\"{EU}\"]\n\
             [[profile.endpoint]]\nname = \"eastus\"\nregion = \"azure:eastus\"\ntargets = [\"{US}\"]\n\
             [[profile.endpoint]]\nname = \"southeastasia\"\nregion = \"azure:southeastasia\"\ntargets = [\"{ASIA}\"]\n"
        ),
    )
    .unwrap();
    zones
}

/// One geosteer instance on its own loopback address (port 0: it picks one and logs it).
fn start_instance(dir: &Path, zones: &Path, addr: &str, region: &str, n: usize) -> Server {
    let geo = repo().join("geo");
    let config = dir.join(format!("geosteer-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nudp = [\"{addr}:0\"]\ntcp = [\"{addr}:0\"]\nworkers = 1\n\
             [zones]\ndirectory = {zones:?}\n\
             [log]\nlevel = \"info\"\nformat = \"json\"\n\
             [geoip]\ncity = {city:?}\n\
             [routing]\nserver_region = \"{region}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nstate_file = {state:?}\n",
            zones = zones.display().to_string(),
            city = geo.join("sample-city.mmdb").display().to_string(),
            state = dir.join(format!("state-{n}.json")).display().to_string(),
        ),
    )
    .unwrap();
    let s = Server::start_with(Opts {
        config_path: Some(config),
        ..Default::default()
    });
    assert_eq!(s.udp4.ip().to_string(), addr, "instance {n} address");
    s
}

/// Debian's unbound on a free loopback port, killed (by PID) on drop.
struct Unbound {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Unbound {
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(30)..].join("\n")
    }
}

fn unbound_binary(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("tests/multinode.rs needs `{name}` (Debian package unbound): apt-get install -y --no-install-recommends unbound")
    })
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    for _ in 0..50 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

fn start_unbound(dir: &Path, stubs: &[SocketAddr]) -> Unbound {
    let port = free_port();
    let conf = dir.join("unbound.conf");
    let stub_addrs: String = stubs
        .iter()
        .map(|a| format!("    stub-addr: {}@{}\n", a.ip(), a.port()))
        .collect();
    std::fs::write(
        &conf,
        format!(
            "server:\n\
             \x20   interface: 127.0.0.1\n\
             \x20   port: {port}\n\
             \x20   do-ip6: no\n\
             \x20   do-daemonize: no\n\
             \x20   username: \"\"\n\
             \x20   chroot: \"\"\n\
             \x20   directory: \"{dir}\"\n\
             \x20   pidfile: \"{dir}/unbound.pid\"\n\
             \x20   use-syslog: no\n\
             \x20   logfile: \"\"\n\
             \x20   verbosity: 1\n\
             \x20   num-threads: 1\n\
             \x20   outgoing-range: 64\n\
             \x20   num-queries-per-thread: 32\n\
             \x20   so-reuseport: no\n\
             \x20   access-control: 127.0.0.0/8 allow\n\
             \x20   # The name servers are on loopback addresses.\n\
             \x20   do-not-query-localhost: no\n\
             \x20   # ECS: forward the client's subnet to the authorities of example.test.\n\
             \x20   module-config: \"subnetcache iterator\"\n\
             \x20   client-subnet-zone: \"example.test\"\n\
             \x20   client-subnet-always-forward: yes\n\
             \x20   max-client-subnet-ipv4: 24\n\
             \x20   max-client-subnet-ipv6: 56\n\
             \x20   qname-minimisation: no\n\
             \x20   harden-referral-path: no\n\
             \x20   domain-insecure: \"example.test\"\n\
             \x20   # unbound answers the special-use test. zone itself (RFC 6761) unless told not to.\n\
             \x20   local-zone: \"test.\" nodefault\n\
             \x20   # Answers live one second, so a changed answer shows through at once.\n\
             \x20   cache-max-ttl: 1\n\
             \x20   cache-max-negative-ttl: 1\n\
             remote-control:\n\
             \x20   control-enable: no\n\
             stub-zone:\n\
             \x20   name: \"example.test\"\n\
             \x20   stub-prime: no\n\
             {stub_addrs}",
            dir = dir.display(),
        ),
    )
    .unwrap();
    let check = Command::new(unbound_binary("unbound-checkconf"))
        .arg(&conf)
        .output()
        .expect("run unbound-checkconf");
    assert!(
        check.status.success(),
        "unbound-checkconf: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(unbound_binary("unbound"))
        .args(["-d", "-c"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unbound");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let u = Unbound {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = resolve_raw(&u, &["www.example.test", "A"]);
        if d.status == "NOERROR" && !d.answer.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unbound did not resolve www.example.test within 20 s:\n{}\nlog:\n{}",
            d.raw,
            u.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    u
}

/// A recursive query through unbound (recursion desired, retries left to dig and unbound).
fn resolve_raw(u: &Unbound, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", u.addr.ip()))
        .args(["-p", &u.addr.port().to_string(), "+time=3", "+tries=2"])
        .args(args)
        .output()
        .expect("dig is installed (bind9-dnsutils)");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// The A answer for `mqtt.example.test` as a client in `subnet`, through unbound, and the
/// ECS scope unbound echoed.
fn resolve(u: &Unbound, subnet: &str) -> (Dig, Option<String>, Option<u8>) {
    let d = resolve_raw(u, &["mqtt.example.test", "A", &format!("+subnet={subnet}")]);
    let a = a_record(&d);
    let scope = d
        .client_subnet
        .as_deref()
        .and_then(|s| s.rsplit('/').next())
        .and_then(|s| s.parse().ok());
    (d, a, scope)
}

fn a_record(d: &Dig) -> Option<String> {
    let addrs: Vec<&str> = d
        .answer
        .iter()
        .filter_map(|rr| {
            let f: Vec<&str> = rr.split(' ').collect();
            (f.get(3) == Some(&"A")).then(|| f[4])
        })
        .collect();
    (d.status == "NOERROR" && addrs.len() == 1).then(|| addrs[0].to_string())
}

/// Asked directly (no recursion): the instance's answer for a client in `subnet`.
fn direct(s: &Server, subnet: &str) -> Option<String> {
    a_record(&s.dig(&["mqtt.example.test", "A", &format!("+subnet={subnet}")]))
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// ECS queries an instance has answered (its /metrics).
fn ecs_queries(s: &Server) -> u64 {
    let body = http_get(s.admin.expect("admin address"), "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("geosteer_ecs_queries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no geosteer_ecs_queries_total in:\n{body}"))
}

/// Resolves every client through unbound until each got `want` (first element: subnet).
fn wait_resolved(u: &Unbound, want: &[(&str, &str)], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    for (subnet, addr) in want {
        loop {
            let (d, a, scope) = resolve(u, subnet);
            if a.as_deref() == Some(*addr) {
                assert!(
                    scope.is_some_and(|s| s > 0),
                    "{what}: {subnet}: the answer must come back with an ECS scope > 0 (ECS \
                     passed through unbound to geosteer and back):\n{}",
                    d.raw
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {subnet} did not resolve to {addr} through unbound within {within:?}; \
                 last answer:\n{}\nunbound log:\n{}",
                d.raw,
                u.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn replicas_behind_a_recursive_resolver_survive_instance_and_region_loss() {
    let (port, listeners) = shared_port();
    let dir = tempfile::tempdir().unwrap();
    let zones = write_zone(dir.path(), port);
    let mut servers: Vec<Option<Server>> = INSTANCES
        .iter()
        .enumerate()
        .map(|(i, (addr, region))| Some(start_instance(dir.path(), &zones, addr, region, i + 1)))
        .collect();
    let stubs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.udp4).collect();
    eprintln!("geosteer instances: {stubs:?}");

    // Every instance answers each client from its nearest region.
    let geo = [(LONDON, EU), (SEATTLE, US), (TOKYO, ASIA)];
    for s in servers.iter().flatten() {
        for (subnet, want) in geo {
            poll(Duration::from_secs(10), "direct answer", || {
                (direct(s, subnet).as_deref() == Some(want)).then_some(())
            });
        }
    }

    let u = start_unbound(dir.path(), &stubs);
    eprintln!("unbound on {}", u.addr);

    // (i) Through the resolver: geo-correct. The resolver itself (127.0.0.1) is not in the
    // GeoIP data, so a US or Tokyo answer can only come from the forwarded ECS.
    wait_resolved(&u, &geo, Duration::from_secs(15), "all instances up");

    // (ii) Kill one instance (the first name server): unbound retries the others.
    let before: u64 = servers[1..].iter().flatten().map(ecs_queries).sum();
    let mut killed = servers[0].take().unwrap();
    let status = killed.signal_and_wait("KILL", Duration::from_secs(5));
    assert!(status.is_some(), "instance 1 did not exit");
    drop(killed);
    assert!(
        UdpSocket::bind(stubs[0]).is_ok(),
        "instance 1's address is free again: nobody answers there"
    );
    // Every answer from now on is correct (any wrong or failed one fails the test), until the
    // survivors have answered fresh ECS queries for all three clients (the resolver's cache
    // holds answers for one second at most).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    loop {
        for (subnet, want) in geo {
            let t = Instant::now();
            let (d, a, _) = resolve(&u, subnet);
            assert_eq!(
                a.as_deref(),
                Some(want),
                "one instance down: {subnet} through unbound:\n{}\nunbound log:\n{}",
                d.raw,
                u.log_tail()
            );
            if t.elapsed() > Duration::from_millis(300) {
                eprintln!("{subnet}: {:?} (unbound retried)", t.elapsed());
            }
        }
        rounds += 1;
        let now: u64 = servers[1..].iter().flatten().map(ecs_queries).sum();
        if now >= before + 6 {
            eprintln!(
                "instance 1 down: {rounds} rounds, survivors answered {} ECS queries",
                now - before
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving instances answered only {} ECS queries in 30 s",
            now - before
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // (iii) The EU region fails (its listener goes away: connections refused). Every
    // remaining instance moves London to the US region, asked directly …
    let [eu, _us, _asia] = listeners;
    drop(eu);
    let started = Instant::now();
    for s in servers.iter().flatten() {
        poll(
            Duration::from_secs(10),
            "London moves to the US region",
            || (direct(s, LONDON).as_deref() == Some(US)).then_some(()),
        );
        assert_eq!(direct(s, SEATTLE).as_deref(), Some(US));
        assert_eq!(direct(s, TOKYO).as_deref(), Some(ASIA));
    }
    eprintln!(
        "all remaining instances failed over after {:?}",
        started.elapsed()
    );
    // … and through the resolver.
    wait_resolved(
        &u,
        &[(LONDON, US), (SEATTLE, US), (TOKYO, ASIA)],
        Duration::from_secs(15),
        "EU endpoint down",
    );
    eprintln!("through unbound after {:?}", started.elapsed());
    drop(servers);
}
