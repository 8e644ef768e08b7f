//! Operator commands that talk to a running geosteer over its admin API: drills, forced
//! states, reload.
//!
//! The API address and token come from the same configuration file the server uses (so
//! `geosteer drill start …` on the server's host just works), or from `--api` / `--token` /
//! the `GEOSTEER_TOKEN` environment variable.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::health::{ForceAction, ForceEntry, ForceTarget};

/// Where and how to reach the admin API.
pub struct ApiTarget {
    /// Base URL, e.g. `http://127.0.0.1:8053`.
    pub base: String,
    /// Bearer token, if any.
    pub token: Option<String>,
}

impl ApiTarget {
    /// From flags, falling back to the configuration.
    pub fn resolve(
        config: Option<&Path>,
        api: Option<String>,
        token: Option<String>,
    ) -> Result<Self, String> {
        let token = match token {
            Some(t) => Some(("--token", t)),
            None => std::env::var("GEOSTEER_TOKEN")
                .ok()
                .map(|t| ("GEOSTEER_TOKEN", t)),
        };
        // The shipped placeholder (or any) is refused here as the server refuses it in its
        // configuration: sending it would only fail with 401, less clearly.
        if let Some((source, t)) = &token
            && let Some(word) = crate::config::placeholder(t)
        {
            return Err(format!(
                "{source}: {word:?} is a placeholder, not a token; use the server's token"
            ));
        }
        let token = token.map(|(_, t)| t);
        // Without a token anywhere, the per-run token of a local server with none configured
        // (`ops::runtoken`), found from the same configuration (state file) and port.
        let run_token = |cfg: &Config, port: Option<u16>| {
            port.and_then(|p| crate::ops::runtoken::read(p, &cfg.state_file))
        };
        if let Some(base) = api {
            // The token may still come from the configuration.
            let port = base
                .trim_end_matches('/')
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok());
            let token = token.or_else(|| {
                let cfg = Config::load(config).ok()?;
                cfg.admin_token.clone().or_else(|| run_token(&cfg, port))
            });
            return Ok(Self {
                base: base.trim_end_matches('/').to_string(),
                token,
            });
        }
        let cfg = Config::load(config).map_err(|e| e.to_string())?;
        let addr: SocketAddr = cfg
            .admin_listen
            .ok_or("the admin API is disabled in the configuration ([admin] listen = \"\")")?;
        let token = token
            .or_else(|| cfg.admin_token.clone())
            .or_else(|| run_token(&cfg, Some(addr.port())));
        Ok(Self {
            base: format!("http://{addr}"),
            token,
        })
    }

    /// Sends a request and returns the JSON body, or the API's error text.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())?;
            let url = format!("{}{path}", self.base);
            let mut req = match method {
                "POST" => client.post(&url),
                _ => client.get(&url),
            };
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("cannot reach {url}: {e}"))?;
            let status = resp.status();
            let v: Value = resp
                .json()
                .await
                .map_err(|e| format!("bad response from {url}: {e}"))?;
            if status.is_success() {
                Ok(v)
            } else {
                Err(format!(
                    "{status}: {}",
                    v["error"].as_str().unwrap_or(&v.to_string())
                ))
            }
        })
    }
}

/// Why `geosteer explain` could not show the running server's view.
pub enum ExplainError {
    /// No server answered (or none is configured): the files' view is shown instead, and why.
    Unreachable(String),
    /// The server answered with an error (e.g. not a profile): shown as it is.
    Refused(String),
}

/// `geosteer explain` against the running server (`GET /api/explain`), with a short timeout so
/// an absent server costs little. Returns the server's base URL and its JSON answer.
pub fn explain_from_server(
    config: Option<&Path>,
    name: &str,
    client: std::net::IpAddr,
    ecs: Option<ipnet::IpNet>,
    qtype: &str,
) -> Result<(String, Value), ExplainError> {
    let t = ApiTarget::resolve(config, None, None).map_err(ExplainError::Unreachable)?;
    let mut path = format!("/api/explain?name={name}&client={client}&type={qtype}");
    if let Some(e) = ecs {
        path.push_str(&format!("&ecs={e}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExplainError::Unreachable(e.to_string()))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ExplainError::Unreachable(e.to_string()))?;
        let url = format!("{}{path}", t.base);
        let resp = client.get(&url).send().await.map_err(|_| {
            ExplainError::Unreachable(format!("no running server answered at {}", t.base))
        })?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| {
            ExplainError::Unreachable(format!("{} did not answer like geosteer: {e}", t.base))
        })?;
        if status.is_success() && v["text"].is_string() {
            Ok((t.base.clone(), v))
        } else {
            Err(ExplainError::Refused(
                v["error"]
                    .as_str()
                    .map_or_else(|| v.to_string(), str::to_string),
            ))
        }
    })
}

/// `geosteer drill start`.
pub fn drill_start(
    t: &ApiTarget,
    profile: &str,
    endpoint: &str,
    duration: &str,
    scope: &[String],
    dry_run: bool,
) -> Result<String, String> {
    let v = t.call(
        "POST",
        "/api/drills",
        Some(json!({ "profile": profile, "endpoint": endpoint, "duration": duration, "scope": scope, "dry_run": dry_run })),
    )?;
    Ok(v["text"].as_str().unwrap_or_default().to_string())
}

/// `geosteer drill status`.
pub fn drill_status(t: &ApiTarget) -> Result<String, String> {
    let v = t.call("GET", "/api/drills", None)?;
    let drills: Vec<crate::ops::drill::DrillRecord> =
        serde_json::from_value(v).map_err(|e| e.to_string())?;
    if drills.is_empty() {
        return Ok("no drills\n".into());
    }
    Ok(drills.iter().map(ToString::to_string).collect())
}

/// `geosteer demo down|up NAME`.
pub fn demo(t: &ApiTarget, endpoint: &str, up: bool) -> Result<String, String> {
    let v = t.call(
        "POST",
        "/api/demo",
        Some(json!({ "endpoint": endpoint, "up": up })),
    )?;
    Ok(format!(
        "demo endpoint {endpoint} ({}) is {}\n",
        v["listen"].as_str().unwrap_or("-"),
        if up {
            "up: probes succeed again; answers return after the recovery threshold"
        } else {
            "down: connections are refused; answers move after the failure threshold"
        }
    ))
}

/// `geosteer fleet`: one line per live instance, then skew and disagreements.
pub fn fleet(t: &ApiTarget) -> Result<String, String> {
    use std::fmt::Write;
    let v = t.call("GET", "/api/fleet", None)?;
    let f: crate::ops::fleet::FleetView = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "fleet {} via {}: {} (state confirmed {} ago, revision {}); asked: {}",
        f.prefix,
        f.endpoint,
        if f.connected {
            "connected"
        } else {
            "DISCONNECTED from etcd — serving the last state seen, changes are refused"
        },
        if f.state_age_s < 0.0 {
            "never".to_string()
        } else {
            format!("{:.1}s", f.state_age_s)
        },
        f.revision,
        f.instance
    );
    let _ = writeln!(
        o,
        "{:<32} {:<9} {:<18} {:>6} {:>10}",
        "INSTANCE", "VERSION", "CONFIG", "GEN", "HEARTBEAT"
    );
    for i in &f.instances {
        let _ = writeln!(
            o,
            "{:<32} {:<9} {:<18} {:>6} {:>9.1}s{}{}",
            i.info.instance,
            i.info.version,
            i.info.config_digest,
            i.info.generation,
            i.heartbeat_age_s,
            if i.config_skew { "  CONFIG SKEW" } else { "" },
            if i.this { "  (this)" } else { "" }
        );
    }
    if f.config_skew {
        let _ = writeln!(
            o,
            "configuration skew: live instances run different configurations (see CONFIG)"
        );
    }
    if f.disagreements.is_empty() {
        let _ = writeln!(
            o,
            "all live instances give the same answers for the sample subnets"
        );
    }
    for d in &f.disagreements {
        let _ = writeln!(o, "DISAGREE {} for {}:", d.profile, d.subnet);
        for (answer, who) in &d.answers {
            let _ = writeln!(o, "  {answer:<40} {}", who.join(", "));
        }
    }
    Ok(o)
}

/// `geosteer drill stop`.
pub fn drill_stop(t: &ApiTarget, id: Option<&str>) -> Result<String, String> {
    let v = t.call("POST", "/api/drills/stop", Some(json!({ "id": id })))?;
    Ok(format!(
        "stopping {} drill(s); they revert and verify in the background\n",
        v["stopped"]
    ))
}

/// `geosteer force`: what the call changed, in words — on a lift, every entry it lifted (or
/// that there was nothing to lift), the drills it stopped, and any force still holding it.
pub fn force(t: &ApiTarget, body: Value) -> Result<String, String> {
    let v = t.call("POST", "/api/force", Some(body))?;
    Ok(force_report(&v))
}

fn target_text(t: &ForceTarget) -> String {
    match t {
        ForceTarget::Endpoint(k) => format!("endpoint {k}"),
        ForceTarget::Region(r) => format!("region {r}"),
    }
}

fn entry_text(e: &ForceEntry) -> String {
    let action = match e.force.action {
        ForceAction::Down => "down",
        ForceAction::Up => "up",
    };
    let scope = if e.force.scope.is_empty() {
        "all clients".to_string()
    } else {
        e.force
            .scope
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let by = e
        .drill
        .as_ref()
        .map_or(String::new(), |d| format!(" [drill {d}]"));
    format!(
        "  {} {action} for {scope}{by}: {}\n",
        target_text(&e.target),
        e.force.reason
    )
}

/// The text of a `POST /api/force` answer (see `ops::control::ForceOutcome`).
fn force_report(v: &Value) -> String {
    let list =
        |k: &str| -> Vec<ForceEntry> { serde_json::from_value(v[k].clone()).unwrap_or_default() };
    let Ok(target) = serde_json::from_value::<ForceTarget>(v["target"].clone()) else {
        return format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    };
    let target = target_text(&target);
    let (lifted, still, forced) = (list("lifted"), list("still_forced"), list("forced"));
    let mut out = String::new();
    match v["action"].as_str() {
        None => {
            if lifted.is_empty() {
                out.push_str(&format!(
                    "nothing to lift: no forced state or drill on {target}\n"
                ));
            } else {
                out.push_str(&format!(
                    "lifted {} forced state(s) on {target}:\n",
                    lifted.len()
                ));
                lifted.iter().for_each(|e| out.push_str(&entry_text(e)));
            }
            let drills: Vec<String> =
                serde_json::from_value(v["stopped_drills"].clone()).unwrap_or_default();
            if !drills.is_empty() {
                out.push_str(&format!(
                    "stopped drill(s) {}: they verify the revert in the background (geosteer drill status)\n",
                    drills.join(", ")
                ));
            }
            if !still.is_empty() {
                out.push_str("still forced (lift the region to clear it):\n");
                still.iter().for_each(|e| out.push_str(&entry_text(e)));
            }
        }
        Some(action) => {
            out.push_str(&format!("forced {target} {action}\n"));
            if !lifted.is_empty() {
                out.push_str("replacing:\n");
                lifted.iter().for_each(|e| out.push_str(&entry_text(e)));
            }
        }
    }
    out.push_str(&format!("forced states in effect: {}\n", forced.len()));
    forced.iter().for_each(|e| out.push_str(&entry_text(e)));
    out
}

/// `geosteer reload [--allow-removal]`.
pub fn reload(t: &ApiTarget, allow_removal: bool) -> Result<String, String> {
    let path = if allow_removal {
        "/api/reload?allow_removal=true"
    } else {
        "/api/reload"
    };
    let v = t.call("POST", path, None)?;
    Ok(format!("reloaded: generation {}\n", v["generation"]))
}
