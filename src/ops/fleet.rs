//! The fleet: one control state for every geosteer instance, kept in etcd.
//!
//! Key layout under the prefix `P` (default `/geosteer/`), every value a JSON [`Stamped`]
//! (who wrote it, when, and the value):
//! - `P/force/<id>` — a forced state ([`ForceEntry`]); `<id>` names its target
//!   (`e:<endpoint key>`, `r:<region>`) or its drill (`d:<drill id>`).
//! - `P/drill/<id>` — a drill record ([`DrillRecord`]).
//! - `P/result/<drill id>/<instance>` — what one instance saw of a drill ([`InstanceResult`]).
//! - `P/instance/<name>` — an instance's registration and heartbeat ([`InstanceInfo`]),
//!   attached to its lease: an instance that stops heartbeating disappears by itself.
//!
//! Every instance mirrors the whole prefix (one range read, then a watch), rebuilds its forced
//! states and drills from the mirror on every change, and hands them to its prober — the same
//! path a local `force` takes, so a peer's change is served within the watch latency plus one
//! snapshot publish. Writes (`force`, `drill start|stop`) go to etcd first and take effect
//! locally only once etcd has them: a change etcd has not accepted is refused, never kept on
//! one NS alone.
//!
//! Static stability: the DNS path never waits on any of this. It reads the snapshots the
//! control plane publishes; if etcd is unreachable or has lost quorum, the last state seen
//! keeps serving (and is kept in the state file, so a restart during an etcd outage serves it
//! too); when etcd is back the mirror is read again in full and the fleet reconciles.
//!
//! Expiry does not depend on the instance that started a drill or a timed force: every
//! instance drops a force at its `until` by its own clock (the prober does), and every instance
//! finishes, in etcd, a drill whose starter did not (compare-and-swap, so one of them does it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::drill::{DrillRecord, DrillStatus, FleetDrill, InstanceResult};
use super::store::Persisted;
use crate::base::{Clock, Counter};
use crate::cluster::Settings;
use crate::cluster::etcd::{self, Compare, Event, Kv, Op};
use crate::health::{ForceEntry, ForceTarget};

/// How long an instance gives a drill's starter, past the drill's expiry, to finish it before
/// finishing it itself in etcd.
/// Covers the starter's own revert check (up to 15 s) and some clock skew.
const STARTER_GRACE: Duration = Duration::from_secs(20);
/// For a drill whose starter has left the fleet (its lease expired), and for timed forces.
const DEAD_STARTER_GRACE: Duration = Duration::from_secs(2);

/// A value as stored: who wrote it and when (milliseconds since the epoch, the writer's clock:
/// the watch lag is measured against it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// Instance that wrote it.
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The value.
    pub value: T,
}

/// An instance's votes as published (`votes/<instance>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VotesDoc {
    /// Where the instance is (`[routing] server_region` or lat/lon): its vantage point, as
    /// [lat, lon]; `None` = no location (its votes count, its RTTs do not steer).
    pub at: Option<[f64; 2]>,
    /// Its vote per endpoint key.
    pub endpoints: BTreeMap<String, OwnVote>,
}

/// One endpoint's vote as this instance publishes it (the key is the endpoint key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OwnVote {
    /// Its probes say up.
    pub up: bool,
    /// Smoothed probe RTT, ms (one decimal).
    pub rtt_ms: Option<f64>,
    /// Since when, Unix seconds.
    pub since_unix: f64,
}

/// One profile's answer for one sample subnet, as an instance serves it now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Served {
    /// Profile owner name.
    pub profile: String,
    /// Sample client subnet.
    pub subnet: String,
    /// The answer.
    pub answer: String,
}

/// An instance's registration, rewritten every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub instance: String,
    /// geosteer version.
    pub version: String,
    /// Digest of every file the configuration was built from (config, zones, profiles):
    /// different digests on live instances = configuration skew.
    pub config_digest: String,
    /// Configuration generation (1 = as started).
    pub generation: u64,
    /// Start time, Unix seconds.
    pub started_unix: u64,
    /// This heartbeat, ms since the epoch.
    pub heartbeat_ms: u64,
    /// What it serves for each profile's sample subnets (`[admin] drill_samples`).
    pub serving: Vec<Served>,
}

impl InstanceInfo {
    /// Equal but for the heartbeat time.
    pub(super) fn same_but_time(&self, other: &Self) -> bool {
        self.instance == other.instance
            && self.version == other.version
            && self.config_digest == other.config_digest
            && self.generation == other.generation
            && self.serving == other.serving
    }
}

/// One row of the fleet view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    /// The registration.
    #[serde(flatten)]
    pub info: InstanceInfo,
    /// Seconds since its last heartbeat (by this instance's clock).
    pub heartbeat_age_s: f64,
    /// Its digest differs from the most common one.
    pub config_skew: bool,
    /// This is the instance answering.
    pub this: bool,
}

/// A profile and sample subnet the live instances answer differently.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disagreement {
    /// Profile owner.
    pub profile: String,
    /// Sample subnet.
    pub subnet: String,
    /// Answer → instances serving it.
    pub answers: BTreeMap<String, Vec<String>>,
}

/// `GET /api/fleet`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// This instance.
    pub instance: String,
    /// Key prefix.
    pub prefix: String,
    /// The etcd endpoint in use.
    pub endpoint: String,
    /// This instance reaches an etcd quorum now and has read the fleet's state since it
    /// (re)connected: operator changes are accepted.
    pub connected: bool,
    /// Seconds since this instance last confirmed its view with etcd.
    pub state_age_s: f64,
    /// etcd revision of the last change applied.
    pub revision: i64,
    /// Live instances (registered, lease not expired).
    pub instances: Vec<InstanceView>,
    /// More than one configuration digest among live instances.
    pub config_skew: bool,
    /// Sample answers the live instances disagree on.
    pub disagreements: Vec<Disagreement>,
}

/// The mirror of the prefix: every key's value and revision, and the revision of deleted keys
/// (so a late watch event can never resurrect what a newer write removed).
#[derive(Default)]
pub(super) struct Mirror {
    pub(super) kv: BTreeMap<String, (Vec<u8>, i64)>,
    deleted: HashMap<String, i64>,
}

impl Mirror {
    pub(super) fn put(&mut self, key: String, value: Vec<u8>, rev: i64) -> bool {
        let newest = self.kv.get(&key).map_or(0, |(_, r)| *r);
        let gone = self.deleted.get(&key).copied().unwrap_or(0);
        if rev < newest || rev <= gone {
            return false;
        }
        self.deleted.remove(&key);
        self.kv.insert(key, (value, rev));
        true
    }

    pub(super) fn delete(&mut self, key: String, rev: i64) -> bool {
        let newest = self.kv.get(&key).map_or(0, |(_, r)| *r);
        if rev < newest {
            return false;
        }
        let had = self.kv.remove(&key).is_some();
        self.deleted.insert(key, rev);
        had
    }

    pub(super) fn under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8], i64)> {
        self.kv
            .range::<String, _>(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| (k.as_str(), v.as_slice(), *r))
    }
}

/// This instance's link to the fleet.
pub struct Fleet {
    pub(super) settings: Settings,
    pub(super) client: etcd::Client,
    pub(super) clock: Clock,
    pub(super) mirror: Mutex<Mirror>,
    pub(super) connected: AtomicBool,
    /// The "unreachable" warning was logged once (start-up without etcd logs it once, not per
    /// attempt).
    pub(super) warned_once: AtomicBool,
    /// Unix ms of the last confirmation of the view with etcd (0 = never).
    pub(super) confirmed_ms: AtomicU64,
    /// Lag of the last change applied from the watch, ms.
    pub(super) watch_lag_ms: AtomicU64,
    pub(super) revision: AtomicI64,
    pub(super) lease: AtomicI64,
    /// Revision of the last registration write and when it was made: the watch must deliver
    /// it (or later) within two heartbeats, else it has stalled and the state is read again.
    pub(super) echo: Mutex<Option<(i64, tokio::time::Instant)>>,
    /// The lease the registration was last written with.
    pub(super) lease_written: AtomicI64,
    /// The registration last written, and when (ms).
    pub(super) last_info: Mutex<Option<(u64, InstanceInfo)>>,
    /// Wakes the watch loop to read everything again (after a lost connection).
    pub(super) resync: Notify,
    /// Drills this instance verifies (or verified): one verifier per drill.
    pub(super) verifying: Mutex<BTreeSet<String>>,
    /// Operator changes refused because etcd was unreachable.
    pub writes_refused: Counter,
    /// The fleet's state was read in full since the link last (re)connected: writes before
    /// that could resurrect what peers changed meanwhile, so they are refused.
    pub(super) synced: AtomicBool,
    /// The prober weighs the fleet's votes (false: none yet, or stale).
    pub(super) votes_in_use: AtomicBool,
    pub(super) started_unix: u64,
    /// Configuration digest and the generation it is for.
    pub(super) digest: Mutex<(u64, String)>,
}

pub(super) fn ms(clock: &Clock) -> u64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<Stamped<T>> {
    serde_json::from_slice(bytes).ok()
}

/// The key suffix of a forced state (see the module docs).
pub fn force_id(f: &ForceEntry) -> String {
    match (&f.drill, &f.target) {
        (Some(d), _) => format!("d:{d}"),
        (None, ForceTarget::Endpoint(k)) => format!("e:{k}"),
        (None, ForceTarget::Region(r)) => format!("r:{r}"),
    }
}

impl Fleet {
    /// A link for `settings` (no I/O yet).
    pub fn new(settings: Settings, clock: Clock) -> Result<Arc<Self>, String> {
        let client = etcd::Client::new(&settings)?;
        Ok(Arc::new(Self {
            settings,
            client,
            clock,
            mirror: Mutex::default(),
            connected: AtomicBool::new(false),
            warned_once: AtomicBool::new(false),
            confirmed_ms: AtomicU64::new(0),
            watch_lag_ms: AtomicU64::new(0),
            revision: AtomicI64::new(0),
            lease: AtomicI64::new(0),
            lease_written: AtomicI64::new(0),
            echo: Mutex::new(None),
            last_info: Mutex::new(None),
            resync: Notify::new(),
            verifying: Mutex::default(),
            writes_refused: Counter::default(),
            votes_in_use: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            started_unix: clock.unix_secs(),
            digest: Mutex::new((0, String::new())),
        }))
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    /// Whether this instance reaches an etcd quorum (as of the last request).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.settings.prefix)
    }

    pub(super) fn stamp<T: Serialize>(&self, value: T) -> Vec<u8> {
        serde_json::to_vec(&Stamped {
            by: self.settings.instance.clone(),
            at_ms: ms(&self.clock),
            value,
        })
        .unwrap_or_default()
    }

    pub(super) fn mark(&self, ok: bool, what: &str, error: Option<&etcd::EtcdError>) {
        let was = self.connected.swap(ok, Ordering::Relaxed);
        if !ok {
            self.synced.store(false, Ordering::Relaxed);
        }
        if ok {
            self.confirmed_ms.store(ms(&self.clock), Ordering::Relaxed);
            if !was {
                info!(endpoint = %self.client.current_endpoint(), "fleet: etcd reachable; serving the fleet's state");
            }
        } else if was || !self.warned_once.swap(true, Ordering::Relaxed) {
            warn!(
                what,
                error = %error.map(ToString::to_string).unwrap_or_default(),
                "fleet: etcd unreachable; serving the last state seen, operator changes are refused until it is back"
            );
        }
    }

    /// The forced states and drills in the mirror.
    pub(super) fn persisted(&self) -> Persisted {
        let m = self.mirror();
        let forced = m
            .under(&self.key("force/"))
            .filter_map(|(_, v, _)| decode::<ForceEntry>(v).map(|s| s.value))
            .collect();
        let mut drills: Vec<DrillRecord> = m
            .under(&self.key("drill/"))
            .filter_map(|(_, v, _)| decode::<DrillRecord>(v).map(|s| s.value))
            .collect();
        drills.sort_by_key(|d| (d.started_ms, d.id.clone()));
        Persisted { forced, drills }
    }

    /// Reads the whole prefix into the mirror. Returns the revision read.
    pub(super) async fn read_all(&self) -> Result<i64, etcd::EtcdError> {
        let (rev, kvs) = self.client.range_prefix(&self.settings.prefix).await?;
        let mut m = self.mirror();
        m.kv = kvs
            .into_iter()
            .map(
                |Kv {
                     key,
                     value,
                     mod_revision,
                 }| (key, (value, mod_revision)),
            )
            .collect();
        m.deleted.clear();
        drop(m);
        self.revision.store(rev, Ordering::Relaxed);
        Ok(rev)
    }

    /// Writes one change — from `before` to `after` — to etcd in one transaction: only the
    /// keys the change touched, each on the condition that no other instance changed it since
    /// this instance last saw it (compare-and-swap on its revision). A key touched concurrently
    /// fails the whole change (nothing is written), the state is read again, and the caller
    /// gets an error to retry: an operator's change is never silently undone by a peer's, nor
    /// a peer's by this one. Refused while the link has not read the fleet's state since it
    /// (re)connected.
    pub async fn store(&self, before: &Persisted, after: &Persisted) -> Result<(), String> {
        if !self.connected() || !self.synced.load(Ordering::Relaxed) {
            self.writes_refused.inc();
            return Err(format!(
                "etcd is unreachable ({}), or the fleet's state has not been read since it came \
                 back: this change was not made; the fleet keeps serving the last state, retry \
                 when `geosteer fleet` shows connected",
                self.client.current_endpoint()
            ));
        }
        let keyed = |p: &Persisted| -> BTreeMap<String, serde_json::Value> {
            let mut m = BTreeMap::new();
            for f in &p.forced {
                m.insert(
                    self.key(&format!("force/{}", force_id(f))),
                    serde_json::to_value(f).unwrap_or_default(),
                );
            }
            for d in &p.drills {
                m.insert(
                    self.key(&format!("drill/{}", d.id)),
                    serde_json::to_value(d).unwrap_or_default(),
                );
            }
            m
        };
        let (old, new) = (keyed(before), keyed(after));
        let mut ops = Vec::new();
        let mut compare = Vec::new();
        {
            let m = self.mirror();
            let seen = |k: &str| m.kv.get(k).map_or(0, |(_, r)| *r);
            for (k, v) in &new {
                if old.get(k) != Some(v) {
                    compare.push(Compare::ModRevision {
                        key: k.clone(),
                        revision: seen(k),
                    });
                    ops.push(Op::Put {
                        key: k.clone(),
                        value: self.stamp(v),
                        lease: 0,
                    });
                }
            }
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                compare.push(Compare::ModRevision {
                    key: k.clone(),
                    revision: seen(k),
                });
                ops.push(Op::Delete { key: k.clone() });
                if let Some(id) = k.strip_prefix(&self.key("drill/")) {
                    ops.push(Op::DeletePrefix {
                        prefix: self.key(&format!("result/{id}/")),
                    });
                }
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        match self.client.txn(&compare, &ops).await {
            Ok((false, _)) => {
                // Another instance changed one of these keys first: read everything again.
                self.resync.notify_one();
                Err(
                    "another instance changed the same forced state or drill at the same \
                     time: this change was not made; look at the state now (`geosteer drill \
                     status`, GET /api/forced) and retry"
                        .into(),
                )
            }
            Ok((true, rev)) => {
                self.mark(true, "write", None);
                let mut m = self.mirror();
                for op in ops {
                    match op {
                        Op::Put { key, value, .. } => {
                            m.put(key, value, rev);
                        }
                        Op::Delete { key } => {
                            m.delete(key, rev);
                        }
                        Op::DeletePrefix { prefix } => {
                            let keys: Vec<String> =
                                m.under(&prefix).map(|(k, _, _)| k.to_string()).collect();
                            for k in keys {
                                m.delete(k, rev);
                            }
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, etcd::EtcdError::Unreachable(_)) {
                    self.mark(false, "write", Some(&e));
                    self.writes_refused.inc();
                }
                Err(format!("{e}: this change was not made"))
            }
        }
    }

    /// Applies watch events to the mirror; returns whether forced states or drills changed,
    /// and whether votes did.
    pub(super) fn take(&self, rev: i64, events: Vec<Event>) -> (bool, bool) {
        let now = ms(&self.clock);
        let control_areas = [self.key("force/"), self.key("drill/")];
        let votes_area = self.key("votes/");
        let mut changed = false;
        let mut votes_changed = false;
        let mut m = self.mirror();
        let mut seen = 0;
        for e in events {
            let (key, applied, stamp) = match e {
                Event::Put(kv) => {
                    seen = seen.max(kv.mod_revision);
                    let at = decode::<serde_json::Value>(&kv.value).map(|s| s.at_ms);
                    let key = kv.key.clone();
                    (key, m.put(kv.key, kv.value, kv.mod_revision), at)
                }
                Event::Delete { key, revision } => {
                    seen = seen.max(revision);
                    (key.clone(), m.delete(key, revision), None)
                }
            };
            if applied && key.starts_with(&votes_area) {
                votes_changed = true;
            }
            if applied && control_areas.iter().any(|a| key.starts_with(a)) {
                changed = true;
                if let Some(at) = stamp {
                    self.watch_lag_ms
                        .store(now.saturating_sub(at), Ordering::Relaxed);
                }
            }
        }
        // Tombstones only guard against events older than a write already in the mirror;
        // once the watch has delivered events up to `seen`, none at or below it can come any
        // more (the header revision can run ahead of events still to come: not that).
        m.deleted.retain(|_, r| *r > seen);
        drop(m);
        if rev > self.revision.load(Ordering::Relaxed) {
            self.revision.store(rev, Ordering::Relaxed);
        }
        (changed, votes_changed)
    }

    /// Live instances from the mirror.
    pub(super) fn instances(&self) -> Vec<InstanceInfo> {
        self.mirror()
            .under(&self.key("instance/"))
            .filter_map(|(_, v, _)| decode::<InstanceInfo>(v).map(|s| s.value))
            .collect()
    }

    /// The fleet view (`GET /api/fleet`, `geosteer fleet`).
    pub fn view(&self) -> FleetView {
        let now = ms(&self.clock);
        let infos = self.instances();
        let mut digests: HashMap<&str, usize> = HashMap::new();
        for i in &infos {
            *digests.entry(i.config_digest.as_str()).or_default() += 1;
        }
        let common = digests
            .iter()
            .max_by_key(|(d, n)| (**n, std::cmp::Reverse(**d)))
            .map(|(d, _)| d.to_string())
            .unwrap_or_default();
        let mut answers: BTreeMap<(String, String), BTreeMap<String, Vec<String>>> =
            BTreeMap::new();
        for i in &infos {
            for s in &i.serving {
                answers
                    .entry((s.profile.clone(), s.subnet.clone()))
                    .or_default()
                    .entry(s.answer.clone())
                    .or_default()
                    .push(i.instance.clone());
            }
        }
        let disagreements = answers
            .into_iter()
            .filter(|(_, a)| a.len() > 1)
            .map(|((profile, subnet), answers)| Disagreement {
                profile,
                subnet,
                answers,
            })
            .collect();
        let instances = infos
            .iter()
            .map(|i| InstanceView {
                heartbeat_age_s: now.saturating_sub(i.heartbeat_ms) as f64 / 1000.0,
                config_skew: i.config_digest != common,
                this: i.instance == self.settings.instance,
                info: i.clone(),
            })
            .collect();
        let confirmed = self.confirmed_ms.load(Ordering::Relaxed);
        FleetView {
            instance: self.settings.instance.clone(),
            prefix: self.settings.prefix.clone(),
            endpoint: self.client.current_endpoint(),
            // In step with the fleet: reaching a quorum *and* having read the state since (the
            // moment operator changes are accepted again).
            connected: self.connected() && self.synced.load(Ordering::Relaxed),
            state_age_s: if confirmed == 0 {
                -1.0
            } else {
                now.saturating_sub(confirmed) as f64 / 1000.0
            },
            revision: self.revision.load(Ordering::Relaxed),
            instances,
            config_skew: digests.len() > 1,
            disagreements,
        }
    }

    /// The fleet's rows for drill `d`.
    pub fn drill_rows(&self, d: &DrillRecord) -> FleetDrill {
        let rows: Vec<InstanceResult> = self
            .mirror()
            .under(&self.key(&format!("result/{}/", d.id)))
            .filter_map(|(_, v, _)| decode::<InstanceResult>(v).map(|s| s.value))
            .collect();
        let live: Vec<String> = self.instances().into_iter().map(|i| i.instance).collect();
        let missing: Vec<String> = live
            .iter()
            .filter(|l| !rows.iter().any(|r| &r.instance == *l))
            .cloned()
            .collect();
        let of_live = |r: &&InstanceResult| live.contains(&r.instance);
        let verified_move = missing.is_empty()
            && !live.is_empty()
            && rows.iter().filter(of_live).all(|r| r.moved == Some(true));
        let verified_back = missing.is_empty()
            && !live.is_empty()
            && rows.iter().filter(of_live).all(|r| r.back == Some(true));
        FleetDrill {
            rows,
            missing,
            verified_move,
            verified_back,
        }
    }

    /// Writes `value` (stamped) at `rest` under the prefix, attached to `lease` (0 = none),
    /// and keeps it in the mirror: this instance's own keys (registration, votes, drill rows).
    pub(super) async fn put_own<T: Serialize>(
        &self,
        rest: &str,
        value: &T,
        lease: i64,
    ) -> Result<i64, etcd::EtcdError> {
        let key = self.key(rest);
        let value = self.stamp(value);
        let put = Op::Put {
            key: key.clone(),
            value: value.clone(),
            lease,
        };
        let (_, rev) = self.client.txn(&[], &[put]).await?;
        self.mirror().put(key, value, rev);
        Ok(rev)
    }

    pub(super) async fn publish_result(&self, drill: &str, r: &InstanceResult) {
        let rest = format!("result/{drill}/{}", self.settings.instance);
        if let Err(e) = self.put_own(&rest, r, 0).await {
            warn!(drill, error = %e, "fleet: drill result not published");
        }
    }

    pub(super) fn still_running(&self, id: &str) -> bool {
        let key = self.key(&format!("drill/{id}"));
        self.mirror()
            .kv
            .get(&key)
            .and_then(|(v, _)| decode::<DrillRecord>(v))
            .is_some_and(|s| s.value.status == DrillStatus::Running)
    }

    /// Finishes, in etcd, drills past their expiry (plus the starter's grace) that are still
    /// Running, and removes their forces and expired timed forces — the starter may be gone.
    /// Compare-and-swap on each key's revision: when several instances try, one does it.
    pub(super) async fn finish_abandoned(&self) {
        let now = self.clock.unix_secs();
        // The starter, while it lives, finishes its drill itself (and checks the revert, up to
        // VERIFY_WITHIN): the others give it STARTER_GRACE. One whose registration is gone
        // (its lease expired: the instance is dead) gets a couple of seconds.
        let live: Vec<String> = self.instances().into_iter().map(|i| i.instance).collect();
        let hb = self.settings.heartbeat.as_secs().max(1);
        let grace_for = |by: Option<&str>| {
            if by.is_some_and(|b| live.iter().any(|l| l == b)) {
                STARTER_GRACE.as_secs() + hb
            } else {
                DEAD_STARTER_GRACE.as_secs() + hb
            }
        };
        let grace = DEAD_STARTER_GRACE.as_secs() + hb;
        let mut work: Vec<(Vec<Compare>, Vec<Op>)> = Vec::new();
        {
            let m = self.mirror();
            for (k, v, rev) in m.under(&self.key("drill/")) {
                let Some(mut s) = decode::<DrillRecord>(v) else {
                    continue;
                };
                // A record with `ended_ms` is being finished by its starter (verifying the
                // revert, up to VERIFY_WITHIN): not abandoned.
                if s.value.status != DrillStatus::Running
                    || s.value.ended_ms.is_some()
                    || now < s.value.until_unix + grace_for(s.value.by.as_deref())
                {
                    continue;
                }
                s.value.status = DrillStatus::Done;
                s.value.ended_ms = Some(s.value.until_unix * 1000);
                let mut ops = vec![Op::Put {
                    key: k.to_string(),
                    value: self.stamp(&s.value),
                    lease: 0,
                }];
                let fkey = self.key(&format!("force/d:{}", s.value.id));
                if m.kv.contains_key(&fkey) {
                    ops.push(Op::Delete { key: fkey });
                }
                work.push((
                    vec![Compare::ModRevision {
                        key: k.to_string(),
                        revision: rev,
                    }],
                    ops,
                ));
            }
            for (k, v, rev) in m.under(&self.key("force/")) {
                if let Some(s) = decode::<ForceEntry>(v)
                    && s.value.force.until.is_some_and(|u| u + grace <= now)
                {
                    work.push((
                        vec![Compare::ModRevision {
                            key: k.to_string(),
                            revision: rev,
                        }],
                        vec![Op::Delete { key: k.to_string() }],
                    ));
                }
            }
        }
        for (compare, ops) in work {
            match self.client.txn(&compare, &ops).await {
                Ok((true, _)) => {
                    info!("fleet: finished an expired drill or force its owner left behind")
                }
                Ok((false, _)) => {}
                Err(e) => warn!(error = %e, "fleet: cannot finish an expired drill or force"),
            }
        }
    }
}

/// The fleet's metrics (Prometheus text). Standalone (`None`), only their HELP and TYPE lines:
/// the families exist on every geosteer, so dashboards and alert rules written for a fleet
/// find them, and no standalone server looks like a disconnected fleet member.
pub fn render_metrics(fleet: Option<&Fleet>, o: &mut String) {
    use std::fmt::Write;
    let view = fleet.map(Fleet::view);
    let mut g = |name: &str, help: &str, kind: &str, lines: Vec<(String, f64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in lines {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let one = |v: Option<f64>| {
        v.map(|v| (String::new(), v))
            .into_iter()
            .collect::<Vec<_>>()
    };
    g(
        "geosteer_cluster_connected",
        "1 when this instance reaches an etcd quorum and has read the fleet's state since (fleet mode).",
        "gauge",
        one(view.as_ref().map(|v| f64::from(u8::from(v.connected)))),
    );
    g(
        "geosteer_cluster_state_age_seconds",
        "Seconds since this instance last confirmed its view of the fleet state with etcd.",
        "gauge",
        one(view.as_ref().map(|v| v.state_age_s)),
    );
    g(
        "geosteer_cluster_watch_lag_seconds",
        "Delay between the last control change's write and this instance applying it.",
        "gauge",
        one(fleet.map(|f| f.watch_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0)),
    );
    g(
        "geosteer_cluster_instances",
        "Live instances this instance sees in the fleet.",
        "gauge",
        one(view.as_ref().map(|v| v.instances.len() as f64)),
    );
    g(
        "geosteer_cluster_heartbeat_age_seconds",
        "Seconds since each live instance's last registration write (rewritten at least every \
         third of the lease TTL).",
        "gauge",
        view.as_ref()
            .map(|v| {
                v.instances
                    .iter()
                    .map(|i| {
                        (
                            format!("{{instance=\"{}\"}}", i.info.instance),
                            i.heartbeat_age_s,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    );
    g(
        "geosteer_cluster_config_skew",
        "1 when live instances run different configurations (digests differ).",
        "gauge",
        one(view.as_ref().map(|v| f64::from(u8::from(v.config_skew)))),
    );
    g(
        "geosteer_cluster_writes_refused_total",
        "Operator changes refused because etcd was unreachable.",
        "counter",
        one(fleet.map(|f| f.writes_refused.get() as f64)),
    );
    let t = etcd::traffic();
    g(
        "geosteer_cluster_etcd_requests_total",
        "Requests this instance sent to etcd.",
        "counter",
        one(fleet.map(|_| t.requests.get() as f64)),
    );
    g(
        "geosteer_cluster_etcd_bytes_total",
        "Bytes this instance exchanged with etcd (request and response bodies).",
        "counter",
        one(fleet.map(|_| t.bytes.get() as f64)),
    );
}

/// Whether any endpoint's up/down differs between two vote documents (or the endpoint set).
pub(super) fn verdicts_differ(a: &VotesDoc, b: &VotesDoc) -> bool {
    a.endpoints.len() != b.endpoints.len()
        || a.endpoints
            .iter()
            .any(|(k, v)| b.endpoints.get(k).is_none_or(|w| w.up != v.up))
}

/// Whether an endpoint's RTT moved enough to be worth republishing: by more than 20 % and
/// 2 ms (noise below that would only shuffle the other instances' rankings, which their
/// hysteresis would then hold anyway).
pub(super) fn rtts_moved(a: &VotesDoc, b: &VotesDoc) -> bool {
    b.endpoints.iter().any(
        |(k, v)| match (a.endpoints.get(k).and_then(|w| w.rtt_ms), v.rtt_ms) {
            (Some(old), Some(new)) => {
                let d = (new - old).abs();
                d > 2.0 && d > old * 0.2
            }
            (None, Some(_)) => true,
            _ => false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_event_never_resurrects_a_deleted_key() {
        let mut m = Mirror::default();
        assert!(m.put("k".into(), b"a".to_vec(), 5));
        assert!(m.delete("k".into(), 7));
        assert!(!m.put("k".into(), b"a".to_vec(), 6));
        assert!(m.kv.is_empty());
        assert!(m.put("k".into(), b"b".to_vec(), 8));
    }
}
