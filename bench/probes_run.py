#!/usr/bin/env python3
"""Probing-at-scale benchmark for geosteer: many TCP-monitored endpoints on one machine.

Started by bench/probes.sh (which builds the binary); see bench/README.md. Standard library
only. Everything runs on 127.0.0.0/8 (all of it is local on Linux):

  - a zone p.test with PROFILES profiles x ENDPOINTS endpoints (default 100 x 100 = 10,000),
    alternately `priority` and `performance` (with Azure regions), each endpoint a distinct
    address 127.X.Y.Z (X, Y, Z in 1..250), monitored with protocol tcp on one port P at
    INTERVAL (10 s) (PROTOCOL=http: an HTTP GET / instead);
  - one endpoint in LISTEN_EVERY (10) has a listener on its address:P (accepts and closes, or with PROTOCOL=http reads the request and answers 200, so
    its probes succeed); the others refuse (RST), so those endpoints end up Degraded and every
    round of theirs is two probes (the probe and its immediate confirmation);
  - geosteer (workers = WORKERS) is sampled every SAMPLE seconds: CPU (utime + stime of
    /proc/PID/stat, and per thread), RSS (/proc/PID/status), and /metrics (geosteer_probes_total
    summed, endpoint states, state changes, reloads). Phases: start-up until /readyz answers 200
    (every endpoint has a probe result; at most READY_TIMEOUT), WARMUP seconds of settling, then
    DURATION seconds of steady state;
  - RELOADS SIGHUPs are sent during the steady state; the state (Online count, state changes)
    and the probe rate around them are compared. A reload that does not finish within
    RELOAD_WAIT is reported, and no further SIGHUP is sent while it is pending. If the start-up
    is still going at STARTUP_RELOAD seconds, one SIGHUP is sent then (not waited for).

The listeners also timestamp every accepted connection, which gives an independent,
1-second-resolution view of how evenly the (successful) probes are spread.

Environment: GEOSTEER_BIN, REPO, PROFILES, ENDPOINTS, LISTEN_EVERY, INTERVAL, JITTER, DURATION,
SAMPLE, WARMUP, READY_TIMEOUT, RELOADS, RELOAD_WAIT, STARTUP_RELOAD, WORKERS, PROTOCOL (tcp, or
http: the listeners answer 200 and the monitor is an HTTP GET), KEEP_TMP. Tables go to stdout, progress to stderr.
Exit status: 0 no anomaly, 1 anomalies (listed), 2 the run could not be completed.
"""

import ctypes
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
START_DEADLINE = 30.0   # s for geosteer to log the admin address

REGIONS = ["westeurope", "northeurope", "uksouth", "francecentral", "germanywestcentral",
           "swedencentral", "eastus", "eastus2", "centralus", "westus2", "southcentralus",
           "canadacentral", "brazilsouth", "southeastasia", "eastasia", "japaneast",
           "australiaeast", "centralindia", "koreacentral", "southafricanorth"]


def log(msg):
    print(f"[probes] {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    pass


def env_int(name, default, lo, hi):
    raw = os.environ.get(name, "") or str(default)
    try:
        v = int(raw)
    except ValueError:
        raise Abort(f"{name} must be an integer (got {raw!r})")
    if not lo <= v <= hi:
        raise Abort(f"{name} must be in {lo}..{hi} (got {v})")
    return v


def parse_duration(s):
    """'10s', '250ms', '1m' -> seconds (the subset of humantime the script needs)."""
    s = s.strip()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if s.endswith(suffix) and s[:-len(suffix)].replace(".", "", 1).isdigit():
            return float(s[:-len(suffix)]) * mult
    raise Abort(f"cannot parse duration {s!r} (use e.g. 10s, 500ms)")


def addr_of(i):
    """Endpoint i -> a distinct 127.X.Y.Z with X, Y, Z in 1..250."""
    return f"127.{1 + i // 62500}.{1 + (i // 250) % 250}.{1 + i % 250}"


# ------------------------------------------------------------------ endpoint listeners

class Listeners:
    """Listening sockets on many loopback addresses, served by one epoll thread that accepts
    and closes every connection and timestamps it."""

    def __init__(self, addrs, reply=b""):
        self.addrs = addrs
        self.reply = reply
        self.socks = []
        self.accepts = []  # monotonic times
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.port = self._bind_all()
        self.sel = selectors.DefaultSelector()
        for s in self.socks:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _bind_all(self):
        # Below the ephemeral range (32768-60999 by default), so no outgoing connection's
        # local port can collide with it.
        rng = random.Random()
        for _ in range(30):
            port = rng.randrange(20000, 32000)
            socks = []
            try:
                for a in self.addrs:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((a, port))
                    s.listen(128)
            except OSError:
                for s in socks:
                    s.close()
                continue
            self.socks = socks
            return port
        raise Abort(f"no TCP port free on all {len(self.addrs)} listener addresses after 30 tries")

    def _run(self):
        listening = set(self.socks)
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.2):
                s = key.fileobj
                if s not in listening:
                    # An HTTP connection with its request in: answer, then close (closing
                    # before the request is read would reset the connection).
                    try:
                        s.recv(4096)
                        s.send(self.reply)
                    except OSError:
                        pass
                    self.sel.unregister(s)
                    s.close()
                    continue
                while True:
                    try:
                        c, _ = s.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    t = time.monotonic()
                    if self.reply:
                        c.setblocking(False)
                        self.sel.register(c, selectors.EVENT_READ)
                    else:
                        c.close()
                    with self.lock:
                        self.accepts.append(t)

    def accepts_between(self, a, b):
        with self.lock:
            return [t for t in self.accepts if a <= t < b]

    def close(self):
        self.stop.set()
        self.thread.join(2)
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------ config

def write_config(tmp, repo, port, cfg):
    zones = os.path.join(tmp, "zones")
    os.makedirs(zones)
    with open(os.path.join(zones, "p.test.zone"), "w") as f:
        f.write("$ORIGIN p.test.\n$TTL 60\n@ IN SOA ns.p.test. h.p.test. 1 7200 3600 1209600 30\n"
                "@ IN NS ns.p.test.\nns IN A 127.0.0.1\n")
    monitor = f'protocol = "{cfg["protocol"]}"\nport = {port}\ninterval = "{cfg["interval"]}"\n'
    if cfg["jitter"]:
        monitor += f'jitter = "{cfg["jitter"]}"\n'
    out = ["# generated by bench/probes_run.py\n"]
    i = 0
    for p in range(cfg["profiles"]):
        perf = p % 2 == 1
        out.append(f'[[profile]]\nname = "p{p:03d}"\nmethod = "{"performance" if perf else "priority"}"\n'
                   f"ttl = 30\n[profile.monitor]\n{monitor}")
        for e in range(cfg["endpoints"]):
            out.append(f'[[profile.endpoint]]\nname = "e{e:03d}"\ntargets = ["{addr_of(i)}"]\n')
            if perf:
                out.append(f'region = "azure:{REGIONS[e % len(REGIONS)]}"\n')
            i += 1
    with open(os.path.join(zones, "p.test.toml"), "w") as f:
        f.write("".join(out))
    conf = os.path.join(tmp, "geosteer.toml")
    with open(conf, "w") as f:
        f.write('[server]\nudp = ["127.0.0.1:0"]\ntcp = ["127.0.0.1:0"]\n'
                f'workers = {cfg["workers"]}\n'
                f'[zones]\ndirectory = {json.dumps(zones)}\n'
                # warn, plus the admin address line and the reload lines (both info).
                '[log]\nlevel = "warn,geosteer::app=info,geosteer::ops=info"\nformat = "json"\n'
                f'[geoip]\ncity = {json.dumps(os.path.join(repo, "geo", "sample-city.mmdb"))}\n'
                '[admin]\nlisten = "127.0.0.1:0"\n'
                f'state_file = {json.dumps(os.path.join(tmp, "state.json"))}\n'
                '[rrl]\nenabled = false\n')
    return conf


# ------------------------------------------------------------------ geosteer

def die_with_parent():
    # PR_SET_PDEATHSIG = 1: geosteer gets SIGTERM if this script dies without cleaning up.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


class Server:
    def __init__(self, binary, conf, logpath):
        self.logfile = open(logpath, "w")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([binary, "serve", "--config", conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=die_with_parent)
        self.pid = self.proc.pid
        log(f"geosteer started, pid {self.pid}")
        self.lock = threading.Lock()
        self.admin = None
        self.reloaded = []      # (monotonic, generation, trigger)
        self.reload_errors = [] # log lines
        self.degraded_lines = 0 # "endpoint state changed" at warn (to Degraded)
        self.other_warnings = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(START_DEADLINE):
            raise Abort(f"geosteer did not log 'admin API listening' within {START_DEADLINE:.0f} s; "
                        f"see {logpath}")
        if self.admin is None:
            raise Abort(f"geosteer exited during startup; see {logpath}")

    def _read(self):
        for line in self.proc.stderr:
            self.logfile.write(line)
            now = time.monotonic()
            try:
                v = json.loads(line)
            except ValueError:
                continue
            f = v.get("fields", {})
            msg = f.get("message")
            with self.lock:
                if msg == "admin API listening" and self.admin is None:
                    self.admin = f["addr"]
                    self.ready.set()
                elif msg == "configuration reloaded":
                    self.reloaded.append((now, f.get("generation"), f.get("trigger")))
                elif v.get("level") == "ERROR" and "reload failed" in (msg or ""):
                    self.reload_errors.append(line.strip())
                elif msg == "endpoint state changed":
                    self.degraded_lines += 1
                elif v.get("level") in ("WARN", "ERROR"):
                    self.other_warnings.append(line.strip())
        self.logfile.flush()
        self.ready.set()  # EOF: exited

    def alive(self):
        return self.proc.poll() is None

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def thread_ticks(self):
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                out[tid] = int(rest[11]) + int(rest[12])
            except OSError:
                pass
        return out

    def reload_done_after(self, seen):
        """(monotonic, generation, trigger) of the reload after the first `seen`, or None."""
        with self.lock:
            return self.reloaded[seen] if len(self.reloaded) > seen else None

    def status(self):
        rss = threads = 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        return rss, threads

    def get(self, path, timeout=10):
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout) as r:
            return r.status, r.read()

    def metrics(self):
        t = time.monotonic()
        _, body = self.get("/metrics")
        dt = time.monotonic() - t
        m = {"ok": 0, "failed": 0, "states": {}, "endpoints": 0, "changes": None,
             "reloads": None, "reload_errors": None, "scrape_s": dt, "bytes": len(body), "at": t}
        for line in body.decode().splitlines():
            if line.startswith("geosteer_probes_total{"):
                labels, val = line.rsplit(" ", 1)
                if 'result="ok"' in labels:
                    m["ok"] += int(float(val))
                else:
                    m["failed"] += int(float(val))
            elif line.startswith("geosteer_endpoint_state{"):
                state = line.split('state="', 1)[1].split('"', 1)[0]
                m["states"][state] = m["states"].get(state, 0) + 1
                m["endpoints"] += 1
            elif line.startswith("geosteer_endpoint_state_changes_total "):
                m["changes"] = int(float(line.split()[1]))
            elif line.startswith("geosteer_reloads_total "):
                m["reloads"] = int(float(line.split()[1]))
            elif line.startswith("geosteer_reload_errors_total "):
                m["reload_errors"] = int(float(line.split()[1]))
        return m

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)  # EOF after the exit; it owns the log file until then
        if not self.reader.is_alive():
            self.logfile.close()


def proc_stat_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    idle = v[3] + v[4]
    steal = v[7] if len(v) > 7 else 0
    return sum(v[:8]), idle, steal


# ------------------------------------------------------------------ the run

def fmt_states(st):
    return ", ".join(f"{k} {v}" for k, v in sorted(st.items()))


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |",
           "| " + " | ".join("---:" if i else "---" for i in range(len(head))) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def run(tmp, cfg):
    n = cfg["profiles"] * cfg["endpoints"]
    listen_idx = [i for i in range(n) if i % cfg["listen_every"] == 0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = len(listen_idx) + 256
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise Abort(f"{len(listen_idx)} listeners need {need} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    log(f"binding {len(listen_idx)} listeners (every {cfg['listen_every']}th of {n} endpoints)")
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" \
        if cfg["protocol"] == "http" else b""
    listeners = Listeners([addr_of(i) for i in listen_idx], reply)
    port = listeners.port
    log(f"endpoint port {port}; {addr_of(0)} .. {addr_of(n - 1)}")
    conf = write_config(tmp, cfg["repo"], port, cfg)
    size = os.path.getsize(os.path.join(tmp, "zones", "p.test.toml"))
    log(f"profile file: {cfg['profiles']} profiles x {cfg['endpoints']} endpoints, {size / 1024:.0f} KiB")
    server = None
    anomalies = []

    def anomaly(msg):
        log(f"ANOMALY: {msg}")
        anomalies.append(msg)

    try:
        server = Server(cfg["bin"], conf, os.path.join(tmp, "geosteer.log"))
        t0 = server.t_start
        log(f"admin API at {server.admin}")

        # Readiness = every monitored endpoint has a first result (/readyz, polled every 0.25 s).
        ready_at = [None]
        settled_at = [None]
        stop_polling = threading.Event()

        def poll_ready():
            while not stop_polling.is_set() and server.alive():
                try:
                    code, _ = server.get("/readyz", timeout=5)
                except Exception:
                    code = None
                if code == 200:
                    ready_at[0] = time.monotonic() - t0
                    return
                stop_polling.wait(0.25)
        threading.Thread(target=poll_ready, daemon=True).start()

        stat0 = proc_stat_cpu()
        samples = []
        reloads = []
        S = cfg["sample"]

        def sample(k, phase):
            due = t0 + k * S
            time.sleep(max(0.0, due - time.monotonic()))
            if not server.alive():
                raise Abort(f"geosteer exited (status {server.proc.returncode}); see its log")
            t = time.monotonic()
            cpu = server.cpu_seconds()
            threads = server.thread_ticks()
            rss, nthreads = server.status()
            try:
                m = server.metrics()
            except Exception as e:
                raise Abort(f"/metrics failed at +{t - t0:.1f} s: {e}")
            samples.append({"t": t - t0, "mono": t, "cpu": cpu, "thread_ticks": threads, "rss": rss,
                            "threads": nthreads, "phase": phase, **m})
            log(f"+{t - t0:6.1f}s [{phase}] cpu {cpu:7.2f}s rss {rss / 2**20:6.1f} MiB probes ok "
                f"{m['ok']} failed {m['failed']} [{fmt_states(m['states'])}] "
                f"scrape {m['scrape_s'] * 1000:.0f} ms")

        # Phase 1: start-up, until every endpoint has a result (or READY_TIMEOUT).
        k = 0
        while True:
            sample(k, "start-up")
            k += 1
            at = cfg["startup_reload"]
            if at and not reloads and ready_at[0] is None and samples[-1]["t"] >= at:
                # One SIGHUP while the start-up is still going: how long does a reload take?
                reloads.append(do_reload(server, t0, 0))
            if ready_at[0] is not None and not samples[-1]["states"].get("CheckingEndpoint", 0):
                # /readyz is 200 once every endpoint has one result; a refusing endpoint needs
                # its confirmation too before it leaves CheckingEndpoint.
                settled_at[0] = samples[-1]["t"]
                log(f"/readyz 200 after {ready_at[0]:.2f} s; no endpoint in CheckingEndpoint "
                    f"at +{settled_at[0]:.0f} s")
                break
            if samples[-1]["t"] >= cfg["ready_timeout"]:
                stop_polling.set()
                anomaly(f"start-up not over after {samples[-1]['t']:.0f} s: "
                        f"{samples[-1]['states'].get('CheckingEndpoint', 0)} of {n} endpoints still "
                        f"CheckingEndpoint, /readyz {'200' if ready_at[0] else 'not 200'} "
                        f"(READY_TIMEOUT={cfg['ready_timeout']:.0f})")
                break
        # Phase 2: settle for WARMUP, then DURATION of steady state with RELOADS SIGHUPs.
        steady_from = samples[-1]["t"] + cfg["warmup"]
        end = steady_from + cfg["duration"]
        times = []
        for j in range(cfg["reloads"]):
            t = steady_from + cfg["duration"] * (j + 1) / (cfg["reloads"] + 1)
            times.append((int(t / S) + 0.5) * S)  # mid-window: the window shows its effect
        while True:
            if k * S > end + 1e-9:
                break
            while times and times[0] <= k * S:
                when = times.pop(0)
                time.sleep(max(0.0, t0 + when - time.monotonic()))
                pending = [r for r in reloads if r["done"] is None]
                if pending:
                    # geosteer reloads one at a time; do not queue more behind a stuck one.
                    pending[0]["done"] = server.reload_done_after(pending[0]["seen"])
                    if pending[0]["done"] is None:
                        log(f"skipping the SIGHUP due at +{when:.1f}s: the one at "
                            f"+{pending[0]['t']:.1f}s has not completed")
                        continue
                reloads.append(do_reload(server, t0, cfg["reload_wait"]))
            phase = "steady" if k * S >= steady_from - 1e-9 else "settle"
            sample(k, phase)
            k += 1
        stop_polling.set()
        for r in reloads:
            if r["done"] is None:
                r["done"] = server.reload_done_after(r["seen"])
        stat1 = proc_stat_cpu()
        return report(cfg, n, len(listen_idx), port, server, listeners, samples, reloads,
                      ready_at[0], settled_at[0], stat0, stat1, anomaly, anomalies)
    finally:
        if server is not None:
            server.stop()
            log(f"geosteer stopped (pid {server.pid})")
        listeners.close()


def do_reload(server, t0, wait):
    before = server.metrics()
    with server.lock:
        seen = len(server.reloaded)
    t_hup = time.monotonic()
    os.kill(server.pid, signal.SIGHUP)
    end = t_hup + wait
    done = None
    if not wait:
        log(f"SIGHUP at +{t_hup - t0:.1f}s (not waiting for it)")
    while time.monotonic() < end:
        done = server.reload_done_after(seen)
        if done is not None:
            break
        time.sleep(0.02)
    rec = {"t": t_hup - t0, "mono": t_hup, "seen": seen, "done": done, "before": before, "after": None}
    if done is None:
        if wait:
            log(f"SIGHUP at +{rec['t']:.1f}s: no 'configuration reloaded' within {wait:.0f} s")
        return rec
    time.sleep(1.0)  # let the new plan apply and be published
    rec["after"] = server.metrics()
    log(f"SIGHUP at +{rec['t']:.1f}s: reloaded (generation {done[1]}) in {(done[0] - t_hup) * 1000:.0f} ms; "
        f"Online {before['states'].get('Online', 0)} -> {rec['after']['states'].get('Online', 0)}, "
        f"state changes {before['changes']} -> {rec['after']['changes']}")
    return rec


def report(cfg, n, n_listen, port, server, listeners, samples, reloads, ready_s, settled_s,
           stat0, stat1, anomaly, anomalies):
    S = cfg["sample"]
    wins = []
    for a, b in zip(samples, samples[1:]):
        dt = b["t"] - a["t"]
        ok, failed = b["ok"] - a["ok"], b["failed"] - a["failed"]
        if ok < 0 or failed < 0:
            anomaly(f"geosteer_probes_total went down between +{a['t']:.1f}s and +{b['t']:.1f}s "
                    f"(ok {a['ok']} -> {b['ok']}, failed {a['failed']} -> {b['failed']})")
            ok, failed = max(ok, 0), max(failed, 0)
        busiest = max((v - a["thread_ticks"].get(tid, 0)) for tid, v in b["thread_ticks"].items()) / CLK_TCK
        events = [f"SIGHUP +{r['t']:.1f}s" for r in reloads if a["t"] <= r["t"] < b["t"]]
        events += [f"reload done (SIGHUP +{r['t']:.1f}s)" for r in reloads
                   if r["done"] and a["mono"] <= r["done"][0] < b["mono"] and r["done"][0] - r["mono"] > S]
        wins.append({"from": a["t"], "to": b["t"], "dt": dt, "ok": ok, "failed": failed,
                     "probes": ok + failed,
                     "accepts": len(listeners.accepts_between(a["mono"], b["mono"])),
                     "cpu_pct": (b["cpu"] - a["cpu"]) / dt * 100, "thread_pct": busiest / dt * 100,
                     "rss": b["rss"], "online": b["states"].get("Online", 0),
                     "degraded": b["states"].get("Degraded", 0),
                     "checking": b["states"].get("CheckingEndpoint", 0),
                     "changes": b["changes"], "phase": b["phase"], "events": ", ".join(events)})
    steady = [w for w in wins if w["phase"] == "steady"]
    if not steady:
        raise Abort("no steady-state window; raise DURATION")
    startup = [s for s in samples if s["phase"] == "start-up"]
    su_end = startup[-1]
    su_cpu = (su_end["cpu"] - samples[0]["cpu"]) / max(1e-9, su_end["t"] - samples[0]["t"]) * 100
    su_results = (su_end["ok"] + su_end["failed"]) / max(1e-9, su_end["t"])
    first_steady = next(s for s in samples if s["phase"] == "steady")
    last = samples[-1]
    st_dt = last["t"] - first_steady["t"]
    st_probes = (last["ok"] + last["failed"]) - (first_steady["ok"] + first_steady["failed"])
    st_cpu = (last["cpu"] - first_steady["cpu"]) / st_dt * 100
    rates = [w["probes"] / w["dt"] for w in steady]
    mean_rate = st_probes / st_dt
    interval = parse_duration(cfg["interval"])
    jitter = parse_duration(cfg["jitter"]) if cfg["jitter"] else 0.1
    online = last["states"].get("Online", 0)
    expected = (online + 2 * (n - online)) / (interval + jitter / 2)
    a0, a1 = first_steady["mono"], last["mono"]
    acc = listeners.accepts_between(a0, a1)
    bins = [0] * max(1, int(a1 - a0))
    for t in acc:
        i = int(t - a0)
        if i < len(bins):
            bins[i] += 1
    peak_rss = max(s["rss"] for s in samples)
    scrape = [s["scrape_s"] for s in samples]
    busy = (stat1[0] - stat0[0]) - (stat1[1] - stat0[1])
    total = stat1[0] - stat0[0]
    steal_pct = (stat1[2] - stat0[2]) / total * 100 if total else 0.0
    machine_pct = busy / total * 100 if total else 0.0
    ncpu = os.cpu_count() or 1
    st_changes = last["changes"] - first_steady["changes"]

    # ---- checks
    if last["endpoints"] != n:
        anomaly(f"/metrics lists {last['endpoints']} endpoint states, expected {n}")
    if online != n_listen:
        anomaly(f"{online} endpoints Online at the end, expected {n_listen} (the listeners)")
    if st_changes:
        anomaly(f"{st_changes} endpoint state change(s) during the steady state (nothing changed)")
    lo, hi = min(rates), max(rates)
    if hi > 1.5 * mean_rate or lo < 0.5 * mean_rate:
        anomaly(f"probes are bursty: per-{S:.0f} s window rate {lo:.0f}-{hi:.0f} /s around a mean "
                f"of {mean_rate:.0f} /s (listener accepts per 1 s: {min(bins)}-{max(bins)})")
    if mean_rate < 0.7 * expected:
        anomaly(f"steady probe rate {mean_rate:.0f} /s is below the {expected:.0f} /s the schedule "
                "implies (probing falls behind)")
    # Storms, per full probe period (INTERVAL / SAMPLE consecutive windows, so the lockstep
    # alternation cancels out): periods that contain a SIGHUP against periods that do not.
    per = max(1, round(interval / S))
    hup_t = [r["t"] for r in reloads]
    periods = []  # (start s, end s, probes, contains a SIGHUP)
    for i in range(len(steady) - per + 1):
        ws = steady[i:i + per]
        if any(abs(w["dt"] - S) > 0.5 for w in ws):
            continue  # a window stretched by a slow reload: not comparable
        has = any(ws[0]["from"] <= t < ws[-1]["to"] for t in hup_t)
        periods.append((ws[0]["from"], ws[-1]["to"], sum(w["probes"] for w in ws), has))
    quiet = [p[2] for p in periods if not p[3]]
    loud = [p for p in periods if p[3]]
    for p in loud:
        if quiet and p[2] > 1.1 * max(quiet) + 10:
            anomaly(f"probe storm: {p[2]} probes in {p[0]:.0f}-{p[1]:.0f} s, which contains a SIGHUP "
                    f"(periods without one: at most {max(quiet)})")
    for r in reloads:
        if r["done"] is None:
            anomaly(f"SIGHUP at +{r['t']:.1f}s: geosteer never logged 'configuration reloaded' "
                    "during the run")
            continue
        took = r["done"][0] - r["mono"]
        if took > cfg["reload_wait"]:
            anomaly(f"SIGHUP at +{r['t']:.1f}s: the reload took {took:.1f} s")
        if r["after"] is None:
            continue
        b_on, a_on = r["before"]["states"].get("Online", 0), r["after"]["states"].get("Online", 0)
        if b_on != a_on:
            anomaly(f"reload at +{r['t']:.1f}s: Online {b_on} -> {a_on}")
        if r["after"]["states"].get("CheckingEndpoint", 0) > r["before"]["states"].get("CheckingEndpoint", 0):
            anomaly(f"reload at +{r['t']:.1f}s: CheckingEndpoint {r['before']['states'].get('CheckingEndpoint', 0)}"
                    f" -> {r['after']['states']['CheckingEndpoint']}")
        if r["after"]["changes"] != r["before"]["changes"] and not r["before"]["states"].get("CheckingEndpoint"):
            anomaly(f"reload at +{r['t']:.1f}s: state changes {r['before']['changes']} -> "
                    f"{r['after']['changes']}")
    if server.reload_errors or (last["reload_errors"] or 0):
        anomaly(f"reload errors: {last['reload_errors']} ({server.reload_errors[:1]})")
    done = [r for r in reloads if r["done"] is not None and r["done"][0] <= last["mono"]]
    if last["reloads"] != len(done):
        anomaly(f"geosteer_reloads_total = {last['reloads']}, expected {len(done)}")
    if server.other_warnings:
        anomaly(f"{len(server.other_warnings)} other WARN/ERROR log line(s), first: "
                f"{server.other_warnings[0][:300]}")

    # ---- output
    jit = cfg["jitter"] or "100ms (default)"
    print(f"## geosteer probing {n} endpoints ({cfg['protocol']}, interval {cfg['interval']}, jitter {jit})\n")
    print(f"{cfg['profiles']} profiles x {cfg['endpoints']} endpoints; {n_listen} endpoints with a "
          f"listener (Online), {n - n_listen} refusing (Degraded). workers = {cfg['workers']}, "
          f"{ncpu} CPUs, not pinned. Sampled every {S:.0f} s: start-up until /readyz, "
          f"{cfg['warmup']:.0f} s settling, then {st_dt:.0f} s of steady state "
          f"(from +{first_steady['t']:.0f} s) with {len(reloads)} SIGHUP reload(s).\n")
    ready = f"{ready_s:.2f} s" if ready_s is not None else f"not within {su_end['t']:.0f} s"
    settled = f"{settled_s:.0f} s" if settled_s is not None else f"not within {su_end['t']:.0f} s"
    rows = [
        ("start-up: time to /readyz 200 (every endpoint has a probe result)", ready),
        ("start-up: time until no endpoint is CheckingEndpoint (sampled)", settled),
        ("start-up: probe results processed per second", f"{su_results:.0f}"),
        ("start-up: geosteer CPU (% of one core) / busiest thread",
         f"{su_cpu:.1f} % / {max((w['thread_pct'] for w in wins if w['phase'] == 'start-up'), default=0):.0f} %"),
        ("steady: geosteer CPU (% of one core)", f"{st_cpu:.1f} %"),
        (f"steady: geosteer CPU per {S:.0f} s window, min-max",
         f"{min(w['cpu_pct'] for w in steady):.1f}-{max(w['cpu_pct'] for w in steady):.1f} %"),
        ("peak RSS", f"{peak_rss / 2**20:.1f} MiB"),
        ("RSS at steady start / at end", f"{first_steady['rss'] / 2**20:.1f} / {last['rss'] / 2**20:.1f} MiB"),
        ("threads", str(last["threads"])),
        ("steady: probes/s, mean", f"{mean_rate:.0f} (schedule implies ~{expected:.0f}: Online x1 + refusing x2 per round)"),
        (f"steady: probes/s per {S:.0f} s window, min-max", f"{lo:.0f}-{hi:.0f}"),
        ("steady: listener accepts/s (1 s bins), min / mean / max",
         f"{min(bins)} / {len(acc) / max(1e-9, a1 - a0):.0f} / {max(bins)}"),
        ("endpoint states at end", fmt_states(last["states"])),
        ("state changes total / during steady state", f"{last['changes']} / {st_changes}"),
        ("reloads (geosteer_reloads_total) / reload errors", f"{last['reloads']} / {last['reload_errors']}"),
        ("/metrics scrape: size, time (median / max)",
         f"{last['bytes'] / 1024:.0f} KiB, {statistics.median(scrape) * 1000:.0f} / {max(scrape) * 1000:.0f} ms"),
        ("machine busy (all CPUs) / hypervisor steal during the run", f"{machine_pct:.0f} % / {steal_pct:.1f} %"),
    ]
    print(md_table(["figure", "value"], rows))
    print()
    print("Per window (probes = delta of sum(geosteer_probes_total), i.e. results processed; "
          "CPU = % of one core; thread = busiest thread):\n")
    print(md_table(["window s", "phase", "probes", "probes/s", "ok", "failed", "accepts", "CPU %",
                    "thread %", "RSS MiB", "Checking", "Online", "Degraded", "state changes", "event"],
                   [(f"{w['from']:.0f}-{w['to']:.0f}", w["phase"], w["probes"],
                     f"{w['probes'] / w['dt']:.0f}", w["ok"], w["failed"], w["accepts"],
                     f"{w['cpu_pct']:.1f}", f"{w['thread_pct']:.0f}", f"{w['rss'] / 2**20:.1f}",
                     w["checking"], w["online"], w["degraded"], w["changes"], w["events"])
                    for w in wins]))
    if reloads:
        print("\nReloads (SIGHUP; 'after' is scraped 1 s after geosteer logged `configuration reloaded`):\n")
        rows = []
        for r in reloads:
            took = f"{(r['done'][0] - r['mono']) * 1000:.0f}" if r["done"] else "not done"
            if r["after"] is None:
                rows.append((f"{r['t']:.1f}", took, r["done"][1] if r["done"] else "-", "-",
                             r["before"]["states"].get("Online", 0), "-",
                             r["before"]["states"].get("Degraded", 0), "-", r["before"]["changes"], "-"))
                continue
            pb = r["before"]["ok"] + r["before"]["failed"]
            pa = r["after"]["ok"] + r["after"]["failed"]
            rows.append((f"{r['t']:.1f}", took, r["done"][1],
                         f"{(pa - pb) / (r['after']['at'] - r['before']['at']):.0f}",
                         r["before"]["states"].get("Online", 0), r["after"]["states"].get("Online", 0),
                         r["before"]["states"].get("Degraded", 0), r["after"]["states"].get("Degraded", 0),
                         r["before"]["changes"], r["after"]["changes"]))
        print(md_table(["at s", "reload took ms", "generation", "probes/s across it", "Online before",
                        "Online after", "Degraded before", "Degraded after", "state changes before",
                        "after"], rows))
        if periods:
            print(f"\nprobes per full {interval:.0f} s period ({per} windows) in the steady state: "
                  f"periods containing a SIGHUP: {', '.join(str(p[2]) for p in loud) or '-'}; "
                  f"periods without: " + (f"median {statistics.median(quiet):.0f}, {min(quiet)}-{max(quiet)}"
                                          if quiet else "-"))
    print(f"\nlog: {server.degraded_lines} 'endpoint state changed' WARN lines (to Degraded), "
          f"{len(server.other_warnings)} other WARN/ERROR lines")
    print()
    if anomalies:
        print("### Anomalies\n")
        for a in anomalies:
            print(f"- {a}")
    else:
        print("No anomalies.")
    return 1 if anomalies else 0


def main():
    try:
        cfg = {
            "bin": os.environ["GEOSTEER_BIN"],
            "repo": os.environ["REPO"],
            "profiles": env_int("PROFILES", 100, 1, 1000),
            "endpoints": env_int("ENDPOINTS", 100, 1, 1000),
            "listen_every": env_int("LISTEN_EVERY", 10, 1, 1000000),
            "interval": os.environ.get("INTERVAL") or "10s",
            "jitter": os.environ.get("JITTER") or "",
            "duration": float(env_int("DURATION", 120, 10, 3600)),
            "sample": float(env_int("SAMPLE", 5, 1, 60)),
            "warmup": float(env_int("WARMUP", 20, 0, 600)),
            "ready_timeout": float(env_int("READY_TIMEOUT", 600, 5, 7200)),
            "reload_wait": float(env_int("RELOAD_WAIT", 30, 1, 600)),
            "startup_reload": float(env_int("STARTUP_RELOAD", 30, 0, 7200)),
            "reloads": env_int("RELOADS", 4, 0, 100),
            "workers": env_int("WORKERS", 2, 1, 64),
            "protocol": os.environ.get("PROTOCOL") or "tcp",
        }
        if cfg["protocol"] not in ("tcp", "http"):
            raise Abort("PROTOCOL must be tcp or http")
        parse_duration(cfg["interval"])
        if cfg["jitter"]:
            parse_duration(cfg["jitter"])
        n = cfg["profiles"] * cfg["endpoints"]
        if n > 250 ** 3:
            raise Abort("at most 250^3 endpoints")
        if cfg["profiles"] > 1 and cfg["endpoints"] > 1000:
            raise Abort("ENDPOINTS must be <= 1000 (priority range)")
    except (Abort, KeyError) as e:
        log(f"error: {e}")
        return 2
    keep = os.environ.get("KEEP_TMP") == "1"
    tmp = tempfile.mkdtemp(prefix="geosteer-probes-")

    def on_signal(signum, _frame):
        raise Abort(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok = False
    try:
        rc = run(tmp, cfg)
        ok = True
        return rc
    except Abort as e:
        log(f"error: {e}")
        return 2
    finally:
        if keep or not ok:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
