//! Keeping a [`Control`] in step with the fleet: the start-up read, the watch (with full
//! re-reads after a lost connection), the heartbeat (registration, liveness, finishing drills
//! whose starter is gone), the votes (this instance's probe verdicts out, the others' in), and
//! each instance's own verification of every drill.
//!
//! [`Fleet`] (`ops::fleet`) is the fleet's state in etcd and knows nothing of the control
//! plane; this file is where the two meet, so neither imports the other in a loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::control::Control;
use super::drill::{self, DrillRecord, DrillStatus, InstanceResult, VERIFY_EVERY, VERIFY_WITHIN};
use super::fleet::{
    Fleet, InstanceInfo, OwnVote, VotesDoc, decode, ms, rtts_moved, verdicts_differ,
};
use crate::cluster::etcd;
use crate::health::votes::{Vote, Votes};

/// Shortest interval between two vote writes that only carry RTT changes (verdict changes are
/// written at once).
const VOTE_RTT_EVERY: Duration = Duration::from_secs(2);

impl Fleet {
    /// Start-up: reads the fleet's state (waiting at most `start_timeout`) and applies it
    /// before the DNS sockets are served. Unreachable: the state file's last state serves, and
    /// the background loop reconciles when etcd answers.
    pub async fn initial_sync(self: &Arc<Self>, control: &Arc<Control>) {
        let deadline = tokio::time::Instant::now() + self.settings.start_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.read_all()).await {
                Ok(Ok(rev)) => {
                    self.mark(true, "start-up read", None);
                    info!(revision = rev, instance = %self.settings.instance, "fleet: state read from etcd");
                    self.apply(control).await;
                    self.synced.store(true, Ordering::Relaxed);
                    self.push_votes(control).await;
                    return;
                }
                Ok(Err(e)) => {
                    self.mark(false, "start-up read", Some(&e));
                    if tokio::time::Instant::now() + self.settings.heartbeat >= deadline {
                        break;
                    }
                    tokio::time::sleep(self.settings.heartbeat / 2).await;
                }
                Err(_) => break,
            }
        }
        warn!(
            timeout = ?self.settings.start_timeout,
            "fleet: etcd not reachable at start-up; serving the last state seen (state file) until it is"
        );
    }

    /// Rebuilds forced states and drills from the mirror and hands them to the control plane.
    async fn apply(self: &Arc<Self>, control: &Arc<Control>) {
        let drills = control.apply_fleet_state(|| self.persisted()).await;
        let running: Vec<DrillRecord> = drills
            .iter()
            .filter(|d| d.status == DrillStatus::Running)
            .cloned()
            .collect();
        let known: Vec<String> = drills.iter().map(|d| d.id.clone()).collect();
        // Drills no longer kept (pruned, or deleted) need no memory of being verified.
        self.verifying
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| known.contains(id));
        for d in running {
            let fresh = self
                .verifying
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d.id.clone());
            if fresh {
                let (me, control) = (self.clone(), control.clone());
                tokio::spawn(async move { me.verify_drill(&control, d).await });
            }
        }
    }

    /// Runs the fleet link until `stop`: the watch (with full re-reads after a lost
    /// connection) and the heartbeat (registration, liveness, expiry of abandoned drills).
    pub fn spawn(
        self: &Arc<Self>,
        control: Arc<Control>,
        stop: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        let (me, c, s) = (self.clone(), control.clone(), stop.clone());
        tasks.spawn(async move { me.watch_loop(c, s).await });
        let (me, c, s) = (self.clone(), control.clone(), stop.clone());
        tasks.spawn(async move { me.votes_loop(c, s).await });
        let me = self.clone();
        tasks.spawn(async move { me.heartbeat_loop(control, stop).await });
    }

    async fn watch_loop(self: Arc<Self>, control: Arc<Control>, stop: CancellationToken) {
        let mut need_read = self.revision.load(Ordering::Relaxed) == 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            if need_read {
                match self.read_all().await {
                    Ok(_) => {
                        self.mark(true, "read", None);
                        self.apply(&control).await;
                        self.synced.store(true, Ordering::Relaxed);
                        self.push_votes(&control).await;
                    }
                    Err(e) => {
                        self.mark(false, "read", Some(&e));
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(self.settings.heartbeat) => {}
                        }
                        continue;
                    }
                }
            }
            let from = self.revision.load(Ordering::Relaxed) + 1;
            let started = tokio::select! {
                _ = stop.cancelled() => return,
                w = tokio::time::timeout(
                    self.settings.request_timeout * 3,
                    self.client.watch(&self.settings.prefix, from),
                ) => w.unwrap_or_else(|_| {
                    Err(etcd::EtcdError::Unreachable("starting the watch timed out".into()))
                }),
            };
            let mut watch = match started {
                Ok(w) => w,
                Err(e) => {
                    self.mark(false, "watch", Some(&e));
                    need_read = true;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(self.settings.heartbeat) => {}
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.resync.notified() => { need_read = true; break; }
                    n = watch.next() => n,
                };
                match next {
                    Ok(Some((rev, events))) => {
                        let (changed, votes_changed) = self.take(rev, events);
                        if changed {
                            self.apply(&control).await;
                        }
                        if votes_changed {
                            self.push_votes(&control).await;
                        }
                    }
                    Ok(None) => {
                        need_read = true;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "fleet: watch ended; reading the state again");
                        need_read = true;
                        break;
                    }
                }
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, control: Arc<Control>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Leave the fleet at once rather than after the lease TTL.
                    let lease = self.lease.load(Ordering::Relaxed);
                    if lease != 0 {
                        let _ = tokio::time::timeout(self.settings.request_timeout, self.client.revoke(lease)).await;
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let was = self.connected();
            match self.heartbeat(&control).await {
                Ok(()) => {
                    self.mark(true, "heartbeat", None);
                    if !was {
                        // Back after an outage: the watch may have missed changes (or hang on
                        // a member that lost its quorum): read everything again.
                        self.resync.notify_one();
                    }
                    // The watch must have delivered our last registration write by now; if
                    // not, it hangs (a member that lost its quorum without a word, a dead
                    // host): read everything again and watch anew.
                    let stalled = {
                        let echo = self.echo.lock().unwrap_or_else(|e| e.into_inner());
                        echo.is_some_and(|(rev, at)| {
                            at.elapsed() > self.settings.heartbeat * 2
                                && self.revision.load(Ordering::Relaxed) < rev
                        })
                    };
                    if stalled {
                        warn!(
                            "fleet: the watch has not delivered this instance's own writes; reading the state again"
                        );
                        *self.echo.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        self.resync.notify_one();
                    }
                    self.finish_abandoned().await;
                }
                Err(e) => {
                    self.mark(false, "heartbeat", Some(&e));
                    if was {
                        self.resync.notify_one();
                    }
                    let confirmed = self.confirmed_ms.load(Ordering::Relaxed);
                    let stale = ms(&self.clock).saturating_sub(confirmed)
                        > self.settings.votes_stale_after.as_millis() as u64;
                    if stale && self.votes_in_use.swap(false, Ordering::Relaxed) {
                        warn!(
                            stale_after = ?self.settings.votes_stale_after,
                            "fleet: the other instances' votes are stale (etcd unreachable); this instance's own probe verdicts rule until it is back"
                        );
                        control.prober.set_votes(None).await;
                    }
                }
            }
        }
    }

    /// Renews (or obtains) the lease and rewrites the registration.
    async fn heartbeat(&self, control: &Arc<Control>) -> Result<(), etcd::EtcdError> {
        let mut lease = self.lease.load(Ordering::Relaxed);
        if lease != 0 && self.client.keep_alive(lease).await? <= 0 {
            lease = 0;
        }
        if lease == 0 {
            lease = self.client.grant(self.settings.lease_ttl).await?;
            self.lease.store(lease, Ordering::Relaxed);
        }
        let info = self.info(control).await;
        // Rewritten when what it says changes, else every third of the lease TTL: the lease
        // keep-alive is the liveness signal, and every write is streamed to every instance's
        // watch (N² bytes), so a value per heartbeat would be most of the fleet's etcd traffic.
        let fresh_for = self.settings.lease_ttl / 3;
        let renewed = lease == self.lease_written.load(Ordering::Relaxed);
        {
            let last = self.last_info.lock().unwrap_or_else(|e| e.into_inner());
            if renewed
                && let Some((at, old)) = &*last
                && old.same_but_time(&info)
                && info.heartbeat_ms.saturating_sub(*at) < fresh_for.as_millis() as u64
            {
                return Ok(());
            }
        }
        let rev = self
            .put_own(
                &format!("instance/{}", self.settings.instance),
                &info,
                lease,
            )
            .await?;
        self.lease_written.store(lease, Ordering::Relaxed);
        *self.echo.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((rev, tokio::time::Instant::now()));
        *self.last_info.lock().unwrap_or_else(|e| e.into_inner()) = Some((info.heartbeat_ms, info));
        Ok(())
    }

    async fn info(&self, control: &Arc<Control>) -> InstanceInfo {
        let generation = control.generation();
        let cached = {
            let d = self.digest.lock().unwrap_or_else(|e| e.into_inner());
            (d.0 == generation).then(|| d.1.clone())
        };
        let config_digest = match cached {
            Some(d) => d,
            None => {
                let config = control.config.load_full();
                let d = tokio::task::spawn_blocking(move || {
                    // The data every instance must share (zones, profiles, GeoIP, regions),
                    // not geosteer.toml: its listen addresses, instance name and
                    // server_region differ per instance by design.
                    let shared: Vec<std::path::PathBuf> = super::reload::watched(&config)
                        .into_iter()
                        .filter(|f| !config.files.contains(f))
                        .collect();
                    digest_files(&shared)
                })
                .await
                .unwrap_or_default();
                *self.digest.lock().unwrap_or_else(|e| e.into_inner()) = (generation, d.clone());
                d
            }
        };
        InstanceInfo {
            instance: self.settings.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_digest,
            generation,
            started_unix: self.started_unix,
            heartbeat_ms: ms(&self.clock),
            serving: control.sample_answers(),
        }
    }

    /// Hands the other instances' votes (from the mirror) to the prober.
    async fn push_votes(&self, control: &Arc<Control>) {
        let mine = self.key(&format!("votes/{}", self.settings.instance));
        let mut others: HashMap<Arc<str>, Vec<Vote>> = HashMap::new();
        let mut points = HashMap::new();
        if let Some(p) = control.state.load().routing.model.server {
            points.insert(self.settings.instance.clone(), p);
        }
        {
            let m = self.mirror();
            for (k, v, _) in m.under(&self.key("votes/")) {
                if k == mine {
                    continue;
                }
                let Some(s) = decode::<VotesDoc>(v) else {
                    continue;
                };
                if let Some([lat, lon]) = s.value.at {
                    let p = crate::geo::GeoPoint { lat, lon };
                    if p.is_valid() {
                        points.insert(s.by.clone(), p);
                    }
                }
                for (key, vote) in s.value.endpoints {
                    others
                        .entry(Arc::from(key.as_str()))
                        .or_default()
                        .push(Vote {
                            instance: s.by.clone(),
                            up: vote.up,
                            rtt_ms: vote.rtt_ms,
                            since_unix: vote.since_unix,
                        });
                }
            }
        }
        for list in others.values_mut() {
            list.sort_by(|a, b| a.instance.cmp(&b.instance));
        }
        self.votes_in_use.store(true, Ordering::Relaxed);
        control
            .prober
            .set_votes(Some(Votes {
                quorum: self.settings.quorum,
                instance: self.settings.instance.clone(),
                others,
                points,
            }))
            .await;
    }

    /// Publishes this instance's own probe verdicts (its votes) under its lease whenever one
    /// changes — not on every probe: at rest nothing is written, so 1,000 endpoints × 9
    /// instances cost nothing until verdicts change. Looked at whenever the prober publishes a
    /// snapshot (checked every 10 ms); at most one write per 50 ms; rewritten whole after a new
    /// lease (the old one's keys are gone).
    async fn votes_loop(self: Arc<Self>, control: Arc<Control>, stop: CancellationToken) {
        // Checked every 10 ms, but the document is only rebuilt when the prober has published a
        // new snapshot (a pointer compare): a verdict reaches etcd within ~10 ms of its publish.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot: Option<Arc<crate::health::HealthSnapshot>> = None;
        let mut published: Option<(i64, VotesDoc)> = None;
        let mut failing = false;
        let mut last_write = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let lease = self.lease.load(Ordering::Relaxed);
            if lease == 0 || !self.connected() || last_write.elapsed() < Duration::from_millis(50) {
                continue;
            }
            let health = control.health.load_full();
            if last_snapshot
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, &health))
                && published.as_ref().is_some_and(|(l, _)| *l == lease)
            {
                continue;
            }
            last_snapshot = Some(health.clone());
            let mut doc = VotesDoc {
                at: control
                    .state
                    .load()
                    .routing
                    .model
                    .server
                    .map(|p| [p.lat, p.lon]),
                endpoints: BTreeMap::new(),
            };
            for (k, d) in &health.status.details {
                let up = match d.state {
                    crate::health::MonitorState::Online => true,
                    crate::health::MonitorState::Degraded => false,
                    _ => continue,
                };
                doc.endpoints.insert(
                    k.to_string(),
                    OwnVote {
                        up,
                        rtt_ms: d.rtt_ms.map(|r| (r * 10.0).round() / 10.0),
                        since_unix: d.since_unix.floor(),
                    },
                );
            }
            let due = match &published {
                None => true,
                Some((l, old)) => {
                    *l != lease
                        || old.at != doc.at
                        || verdicts_differ(old, &doc)
                        || (last_write.elapsed() >= VOTE_RTT_EVERY && rtts_moved(old, &doc))
                }
            };
            if !due {
                continue;
            }
            last_write = tokio::time::Instant::now();
            let rest = format!("votes/{}", self.settings.instance);
            match self.put_own(&rest, &doc, lease).await {
                Ok(_) => {
                    published = Some((lease, doc));
                    failing = false;
                }
                Err(e) => {
                    // Typically a lease that expired during an outage: the heartbeat grants a
                    // new one. One warning per failure streak, retried at most once a second.
                    if !failing {
                        warn!(error = %e, "fleet: votes not published");
                    }
                    failing = true;
                    last_write += Duration::from_millis(900);
                }
            }
        }
    }

    /// Verifies drill `d` through this instance's own handler: the move, then (once the drill
    /// ended by expiry or stop) the revert; publishes each result.
    async fn verify_drill(self: Arc<Self>, control: &Arc<Control>, d: DrillRecord) {
        let handler = control.handler.clone();
        let expected: Vec<bool> = d.samples.iter().map(|s| s.expected_move).collect();
        let mut result = InstanceResult {
            instance: self.settings.instance.clone(),
            ..Default::default()
        };
        if !expected.iter().any(|e| *e) || d.dry_run {
            return;
        }
        // The move (given up early if the drill is over).
        let (moved, now) = poll_samples(
            &handler,
            &d,
            |s, a| (*a != s.before) == s.expected_move,
            || !self.still_running(&d.id),
        )
        .await;
        result.moved = Some(moved);
        result.moved_ms = moved.then(|| ms(&self.clock).saturating_sub(d.started_ms));
        result.during = now;
        self.publish_result(&d.id, &result).await;
        // Wait for the end: expiry by the clock (slept to the millisecond, so the revert is
        // timed from when it happens), or a stop seen in etcd (checked every VERIFY_EVERY).
        loop {
            let left_ms = (d.until_unix * 1000).saturating_sub(ms(&self.clock));
            if !self.still_running(&d.id) || left_ms == 0 {
                break;
            }
            tokio::time::sleep(VERIFY_EVERY.min(Duration::from_millis(left_ms))).await;
        }
        let ended_ms = self
            .persisted()
            .drills
            .iter()
            .find(|r| r.id == d.id)
            .and_then(|r| r.ended_ms)
            .unwrap_or(d.until_unix * 1000)
            .min(ms(&self.clock));
        let (back, now) = poll_samples(&handler, &d, |s, a| *a == s.before, || false).await;
        result.back = Some(back);
        result.back_ms = back.then(|| ms(&self.clock).saturating_sub(ended_ms));
        result.after = now;
        self.publish_result(&d.id, &result).await;
    }
}

/// Resolves drill `d`'s samples through `handler` every [`VERIFY_EVERY`] until each answer
/// meets `want`, `give_up` says so, or [`VERIFY_WITHIN`] has passed; returns whether all met it,
/// with the last answers.
async fn poll_samples(
    handler: &crate::dns::Handler,
    d: &DrillRecord,
    want: impl Fn(&drill::SampleResult, &String) -> bool,
    give_up: impl Fn() -> bool,
) -> (bool, Vec<String>) {
    let deadline = tokio::time::Instant::now() + VERIFY_WITHIN;
    loop {
        let now: Vec<String> = d
            .samples
            .iter()
            .map(|s| drill::resolve(handler, &d.profile, &s.subnet))
            .collect();
        let met = d.samples.iter().zip(&now).all(|(s, a)| want(s, a));
        if met || give_up() || tokio::time::Instant::now() >= deadline {
            return (met, now);
        }
        tokio::time::sleep(VERIFY_EVERY).await;
    }
}

/// FNV-1a over every file's name and contents: stable across versions and processes (the
/// digest is compared between instances). Unreadable files count as their error text.
fn digest_files(files: &[std::path::PathBuf]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let mut files = files.to_vec();
    files.sort();
    files.dedup();
    for f in &files {
        // File names relative to nothing: instances mount the same files at the same paths.
        eat(f
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default());
        match crate::base::file::read_regular(f, crate::base::file::MAX_ZONE_BYTES) {
            Ok(b) => eat(&b),
            Err(e) => eat(e.as_bytes()),
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("geosteer.toml");
        std::fs::write(&f, "a").unwrap();
        let one = digest_files(std::slice::from_ref(&f));
        std::fs::write(&f, "b").unwrap();
        assert_ne!(one, digest_files(std::slice::from_ref(&f)));
    }
}
