//! The live map page (`GET /`) in a real browser: headless Chromium loads it from a running
//! geosteer, its JavaScript fetches `/api/map` and renders; the test reads the rendered DOM
//! (`--dump-dom`) and a screenshot. Then it forces an endpoint down through the admin API and
//! checks that the page shows the failover: the marker turns `ForcedDown`, the endpoint's cells
//! go to the other regions.
//!
//! Needs Debian's chromium (`apt-get install chromium`); without it the test fails, it does not
//! skip.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The endpoints of the default (first performance) profile, mqtt.example.test.
const ENDPOINTS: [&str; 3] = ["westeurope", "eastus", "southeastasia"];

/// London (51.5 N, 0.1 W).
const LONDON: (f64, f64) = (51.5, -0.1);

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: the map test needs a real browser; apt-get install chromium"
    );
    CHROMIUM
}

/// Runs headless Chromium once on `url` with `extra` arguments and a fresh profile directory;
/// returns stdout. Killed (by PID) if it takes longer than `within`.
fn run_chromium(url: &str, extra: &[String], within: Duration) -> String {
    let profile = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().expect("wait chromium").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {within:?} on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader thread")
}

/// What the rendered page shows.
#[derive(Debug)]
struct Page {
    /// Marker `data-name` → `data-state`.
    markers: HashMap<String, String>,
    /// Legend row `data-name` → (`data-state`, `data-cells`).
    legend: HashMap<String, (String, usize)>,
    /// Cell rects: (centre lat, centre lon, `data-endpoint`).
    cells: Vec<(f64, f64, String)>,
    /// What the legend's percentages are shares of (`data-basis`: queries, networks, cells)
    /// and the caption saying so.
    basis: (String, String),
}

impl Page {
    fn cell_at(&self, lat: f64, lon: f64) -> &str {
        let hits: Vec<_> = self
            .cells
            .iter()
            .filter(|(clat, clon, _)| {
                lat >= clat - 2.5 && lat < clat + 2.5 && lon >= clon - 2.5 && lon < clon + 2.5
            })
            .collect();
        assert_eq!(hits.len(), 1, "exactly one 5° cell contains {lat},{lon}");
        &hits[0].2
    }

    fn cells_of(&self, name: &str) -> Vec<(f64, f64)> {
        self.cells
            .iter()
            .filter(|c| c.2 == name)
            .map(|c| (c.0, c.1))
            .collect()
    }
}

/// Attributes of every start tag `<tag …>` in `html`.
fn tags(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = after.find('>').expect("tag closes");
        out.push(attrs(&after[..end]));
        rest = &after[end..];
    }
    out
}

/// Parses `a="x" b="y"` (the serialiser always double-quotes and escapes `"` as `&quot;`).
fn attrs(s: &str) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut rest = s.trim_start();
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let val_start = &rest[eq + 2..];
        let close = val_start.find('"').expect("attribute value closes");
        let value = val_start[..close]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        m.insert(name, value);
        rest = val_start[close + 1..].trim_start();
    }
    m
}

fn has_class(a: &HashMap<String, String>, class: &str) -> bool {
    a.get("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

fn parse_page(dom: &str) -> Page {
    let markers = tags(dom, "g")
        .into_iter()
        .filter(|a| has_class(a, "endpoint"))
        .map(|a| (a["data-name"].clone(), a["data-state"].clone()))
        .collect();
    let legend = tags(dom, "div")
        .into_iter()
        .filter(|a| a.contains_key("data-cells"))
        .map(|a| {
            let cells = a["data-cells"].parse().expect("data-cells is a count");
            (a["data-name"].clone(), (a["data-state"].clone(), cells))
        })
        .collect();
    let cells = tags(dom, "rect")
        .into_iter()
        .filter(|a| has_class(a, "cell"))
        .map(|a| {
            (
                a["data-lat"].parse().expect("data-lat"),
                a["data-lon"].parse().expect("data-lon"),
                a.get("data-endpoint").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let basis = dom
        .split("id=\"share-basis\"")
        .nth(1)
        .map(|rest| {
            let kind = attrs(rest.split('>').next().unwrap_or_default())
                .get("data-basis")
                .cloned()
                .unwrap_or_default();
            let text = rest
                .split_once('>')
                .and_then(|(_, t)| t.split('<').next())
                .unwrap_or_default()
                .to_string();
            (kind, text)
        })
        .unwrap_or_default();
    Page {
        markers,
        legend,
        cells,
        basis,
    }
}

/// Loads the page in Chromium until it has rendered (`data-ready="1"` on `<body>`) and `ok`
/// accepts it; retries with a deadline.
fn load_page(url: &str, what: &str, ok: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let dom = run_chromium(url, &["--dump-dom".into()], Duration::from_secs(60));
        let last: String = if dom.contains("data-ready=\"1\"") {
            let page = parse_page(&dom);
            if ok(&page) {
                return page;
            }
            format!("{page:?}").chars().take(2000).collect()
        } else {
            dom.chars().take(2000).collect()
        };
        assert!(
            Instant::now() < deadline,
            "the map page never showed {what}; last DOM: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`; returns (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).expect("hex");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Cells per endpoint name according to `/api/map` itself.
fn api_counts(admin: SocketAddr) -> HashMap<String, usize> {
    let (code, body) = http(admin, "GET", "/api/map?step=5", &[], "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<String> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let mut counts: HashMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    for row in v["grid"].as_array().unwrap() {
        for i in row.as_array().unwrap() {
            let i = i.as_i64().unwrap();
            if i >= 0 {
                *counts.get_mut(&names[i as usize]).unwrap() += 1;
            }
        }
    }
    counts
}

#[test]
fn page_is_self_contained() {
    let s = Server::start();
    let admin = s.admin.expect("admin API");
    for path in ["/", "/map"] {
        let (code, html) = http(admin, "GET", path, &[], "");
        assert_eq!(code, 200);
        assert!(html.contains("<svg id=\"map\""), "{path} is the map page");
        // Offline: nothing is loaded from elsewhere (the SVG namespace is an identifier).
        let outside = html.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "//cdn", "@import", "@font-face"] {
            assert!(
                !outside.contains(needle),
                "{path} refers to {needle}: the page must work offline"
            );
        }
    }
}

#[test]
fn map_shows_routing_and_failover_in_a_real_browser() {
    chromium();
    let s = Server::start();
    let admin = s.admin.expect("admin API");
    let url = format!("http://{admin}/");

    // Before: every endpoint has a marker, a legend row and a share of the world.
    let before = load_page(&url, "all three endpoints", |p| {
        ENDPOINTS
            .iter()
            .all(|e| p.markers.contains_key(*e) && p.legend.contains_key(*e))
    });
    assert_eq!(before.cells.len(), 36 * 72, "one rect per 5° cell");
    let api = api_counts(admin);
    for e in ENDPOINTS {
        let (state, cells) = &before.legend[e];
        assert_ne!(before.markers[e], "ForcedDown", "{e} marker");
        assert_ne!(state, "ForcedDown", "{e} legend");
        assert!(*cells > 0, "{e} routes some cells: {:?}", before.legend);
        assert_eq!(
            *cells,
            before.cells_of(e).len(),
            "{e}: legend count = coloured cells"
        );
        assert_eq!(*cells, api[e], "{e}: the page counts what /api/map says");
    }
    assert_eq!(before.cell_at(LONDON.0, LONDON.1), "westeurope", "London");
    let westeurope_cells = before.cells_of("westeurope");
    // No query answered yet: the percentages are shares of GeoIP networks, and say so.
    assert_eq!(before.basis.0, "networks", "{:?}", before.basis);
    assert!(
        before.basis.1.contains("GeoIP networks"),
        "{:?}",
        before.basis
    );
    // Queries from London: now the shares are of queries, and London's region has them all.
    for _ in 0..5 {
        let d = s.dig(&["A", "mqtt.example.test", "+subnet=81.2.69.0/24"]);
        assert_eq!(d.status, "NOERROR");
    }
    let asked = load_page(&url, "shares of queries", |p| p.basis.0 == "queries");
    assert!(
        asked.basis.1.contains("share of queries"),
        "{:?}",
        asked.basis
    );
    let (_, map) = http(admin, "GET", "/api/map?profile=mqtt", &[], "");
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    assert!(map["queries"]["total"].as_u64().unwrap() >= 5, "{map}");
    let names: Vec<&str> = map["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let west = names.iter().position(|n| *n == "westeurope").unwrap();
    assert_eq!(
        map["queries"]["counts"][west].as_u64(),
        map["queries"]["total"].as_u64(),
        "every London query went to westeurope: {map}"
    );

    // Force westeurope down through the admin API.
    let (code, body) = http(
        admin,
        "POST",
        "/api/force",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        r#"{"profile":"mqtt","endpoint_name":"westeurope","action":"down","reason":"map test"}"#,
    );
    assert_eq!(code, 200, "force down: {body}");

    // After: the page shows it, and westeurope's cells went to the other regions.
    let after = load_page(&url, "westeurope forced down", |p| {
        p.markers.get("westeurope").map(String::as_str) == Some("ForcedDown")
    });
    let (state, cells) = &after.legend["westeurope"];
    assert_eq!(state, "ForcedDown");
    assert_eq!(*cells, 0, "no cell routes to a forced-down endpoint");
    assert!(after.cells_of("westeurope").is_empty());
    for (lat, lon) in &westeurope_cells {
        let now = after.cell_at(*lat, *lon);
        assert!(
            now == "eastus" || now == "southeastasia",
            "cell {lat},{lon} of westeurope now goes to {now:?}"
        );
    }
    assert_eq!(
        after.cell_at(LONDON.0, LONDON.1),
        "eastus",
        "London fails over"
    );
    for e in ["eastus", "southeastasia"] {
        assert_ne!(after.markers[e], "ForcedDown", "{e}");
        assert!(after.legend[e].1 >= before.legend[e].1, "{e} gains cells");
    }
    assert_eq!(
        after.legend["eastus"].1 + after.legend["southeastasia"].1,
        36 * 72,
        "every cell routes somewhere"
    );

    // A screenshot of the failed-over map.
    let dir = tempfile::tempdir().expect("tempdir");
    let png: PathBuf = dir.path().join("map.png");
    run_chromium(
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1400,800".into(),
        ],
        Duration::from_secs(60),
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 10 * 1024,
        "screenshot is non-trivial ({} bytes)",
        bytes.len()
    );
}
