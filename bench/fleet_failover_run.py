#!/usr/bin/env python3
"""Fleet failover benchmark for geosteer: quorum health ("Fleet II") seen by three instances.

Started by bench/fleet_failover.sh; see bench/README.md. Standard library only, Linux only,
loopback only. It runs:

  - a real 3-member etcd cluster (the flags of tests/common/etcd.rs, via bench/fleet_run.py);
  - three TCP "regions" on one port P, Python listeners on 127.0.0.11 (eu, westeurope),
    127.0.0.12 (us, eastus) and 127.0.0.13 (asia, southeastasia) that accept and close;
  - three geosteer instances with `[cluster]` (heartbeat 200ms, lease_ttl 2s, request_timeout
    500ms), each with its own zones dir holding the profile of tests/fleet_health.rs: method
    performance, monitor tcp on P, interval 1s (default), timeout 300ms, everything else at its
    default; health decided by the default quorum (majority of the instances' votes);

and measures, per trial, for each case (REFUSED: eu's listener closed; BLACK-HOLED: eu's accept
queue filled so that Linux drops further SYNs):

  1. failover: from t0 (eu broken), every instance's first answer `us` for a London client
     (ECS 81.2.69.0/24); the first and the last instance;
  2. fail-back: from t1 (eu healthy again), every instance's first answer `eu` again;
  3. disagreement: the instances are queried in rounds (one query each) every POLL_MS; rounds
     on a ROUND_MS grid from t0 (the brief's "poll every 100 ms") in which the instances gave
     different answers, until every instance has moved; also the 10 ms rounds and the window;
  4. from the instances' logs: each one's own verdict (`endpoint state changed`) and the
     fleet verdict (`fleet verdict changed`), so the report can say what decided the time.

Environment: GEOSTEER_BIN, REPO, TRIALS (8), CASES ("refused blackhole"), POLL_MS (10),
ROUND_MS (100), OUT (/tmp/fleet-failover.json), KEEP_TMP (0), SEED (random).
Tables go to stdout, progress to stderr.
"""

import base64
import http.client
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/ from the imports below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import failover as fo  # noqa: E402  (listeners on a shared port, log timestamps)
import fleet_run as fr  # noqa: E402  (etcd cluster, processes, HTTP, DNS encoding, tables)

Abort = fr.Abort

EU, US, ASIA = "127.0.0.11", "127.0.0.12", "127.0.0.13"
NAME = "mqtt.h.test"
EU_KEY = "mqtt.h.test./eu"
KEYS = {"mqtt.h.test./eu", "mqtt.h.test./us", "mqtt.h.test./asia"}
TOKEN = "bench-token-0123456789"
INSTANCES = ["gs-1", "gs-2", "gs-3"]

# [cluster] and monitor settings (the brief: tests/fleet_health.rs, interval at its default).
CLUSTER = {"heartbeat": "200ms", "lease_ttl": "2s", "request_timeout": "500ms",
           "start_timeout": "5s"}
MONITOR = {"protocol": "tcp", "timeout": "300ms"}  # + port; interval 1s, tolerated_failures 1,
# recovery 3, jitter 100ms at their defaults (src/health/monitor.rs)
INTERVAL, TIMEOUT, JITTER, HEDGE, RECOVERY = 1.0, 0.300, 0.100, 0.100, 3

START_DEADLINE = 30.0    # s for an instance to log "geosteer serving"
FLEET_DEADLINE = 30.0    # s for every instance to see three instances and three votes on eu
STABLE_FOR = 2.0         # s every instance must answer eu (and hold 3 up votes) before a trial
STABLE_DEADLINE = 30.0
MOVE_DEADLINE = 15.0     # s from t0 / t1 for every instance to answer the new region
HOLD_MIN = 1.0           # s eu stays broken after the last instance moved (+ random 0-1 s) ...
VERDICTS_DEADLINE = 10.0 # ... and until every instance's own verdict is Degraded (bounded)
HOLD_POLL = 0.050        # s between rounds while holding (any eu answer is a flap)
QUERY_TIMEOUT = 0.200    # s for one reply (then it is a timed-out query in that round)
FILL_CONNECT_TIMEOUT = 0.200
EU_BACKLOG = 8           # listen() backlog of the eu listener (the black hole fills it)


def log(msg):
    print(f"[fleet-failover] {msg}", file=sys.stderr, flush=True)


fr.log = log  # fleet_run's Etcd reports through this module's prefix


# ------------------------------------------------------------------ the three regions

class Region:
    """A listener on ip:port that accepts and closes every connection; it can be closed
    (refused), black-holed (accepting stops and the queue is filled, so SYNs are dropped) and
    restored."""

    def __init__(self, ip, port, sock):
        self.ip, self.port = ip, port
        self.sock = sock
        self.fillers = []
        self.thread = None
        self._accept()

    def _accept(self):
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        sock, stop = self.sock, self.stop

        def run():
            while not stop.is_set():
                try:
                    c, _ = sock.accept()
                    c.close()
                except socket.timeout:
                    continue
                except OSError:
                    return

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def _pause(self):
        self.stop.set()
        self.thread.join(2)

    def refuse(self):
        """Closes the listener: connections are refused from the return on. (monotonic, wall)"""
        self._pause()
        self.sock.close()
        self.sock = None
        return time.monotonic(), time.time()

    def blackhole(self):
        """Stops accepting and fills the accept queue; Linux then drops further SYNs without an
        answer, so probes time out. The listener never goes away (no refused window). Returns
        (monotonic, wall) of the last connect that completed (from then on SYNs are dropped)."""
        self._pause()
        full_at = time.monotonic(), time.time()
        for _ in range(4 * EU_BACKLOG + 16):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(FILL_CONNECT_TIMEOUT)
            try:
                c.connect((self.ip, self.port))
            except (socket.timeout, OSError):
                c.close()
                log(f"    black hole: {len(self.fillers)} connection(s) filled the queue "
                    f"(backlog {EU_BACKLOG}; probes that got in count too); the next connect hung")
                return full_at
            self.fillers.append(c)
            full_at = time.monotonic(), time.time()
        raise Abort(f"{self.ip}:{self.port}: {len(self.fillers)} connects completed; the accept "
                    "queue never filled")

    def restore(self):
        """A healthy listener again (a new one after refuse, accepting again after blackhole:
        the queued connections are accepted and closed). (monotonic, wall) when it accepts."""
        if self.sock is None:
            self.sock = fo.bind_listener(self.ip, self.port, EU_BACKLOG)
        self._accept()
        t = time.monotonic(), time.time()
        for c in self.fillers:
            c.close()
        self.fillers = []
        return t

    def close(self):
        if self.sock is not None:
            self._pause()
            self.sock.close()
            self.sock = None
        for c in self.fillers:
            c.close()
        self.fillers = []


def regions():
    """The three regions on one port free on all three addresses."""
    port, socks = fo.shared_port()
    for s in socks:  # shared_port listens with 128; the eu queue is made short to fill fast
        s.listen(EU_BACKLOG)
    return port, {ip: Region(ip, port, s) for ip, s in zip((EU, US, ASIA), socks)}


# ------------------------------------------------------------------ geosteer instances

def write_zones(d, port):
    zones = os.path.join(d, "zones")
    os.makedirs(zones)
    with open(os.path.join(zones, "h.test.zone"), "w") as f:
        f.write("$ORIGIN h.test.\n$TTL 60\n@ IN SOA ns.h.test. h.h.test. 1 2 3 4 30\n"
                "@ IN NS ns.h.test.\nns IN A 127.0.0.1\n")
    endpoints = "".join(
        f'[[profile.endpoint]]\nname = "{n}"\nregion = "azure:{r}"\ntargets = ["{ip}"]\n'
        for n, r, ip in [("eu", "westeurope", EU), ("us", "eastus", US),
                         ("asia", "southeastasia", ASIA)])
    monitor = "".join(f'{k} = "{v}"\n' for k, v in MONITOR.items())
    with open(os.path.join(zones, "h.test.toml"), "w") as f:
        f.write('[[profile]]\nname = "mqtt"\nmethod = "performance"\nttl = 30\n'
                f'[profile.monitor]\n{monitor}port = {port}\n' + endpoints)
    return zones


class Instance:
    """One geosteer with [cluster]; ports read back from its JSON log, which is also parsed for
    the own and fleet verdicts (wall-clock timestamps)."""

    def __init__(self, binary, repo, tmp, name, etcd, prefix, port):
        self.name = name
        d = os.path.join(tmp, name)
        os.makedirs(d)
        zones = write_zones(d, port)
        geo = os.path.join(repo, "geo")
        self.conf = os.path.join(d, "geosteer.toml")
        with open(self.conf, "w") as f:
            f.write('[server]\nudp = ["127.0.0.1:0"]\ntcp = ["127.0.0.1:0"]\nworkers = 1\n'
                    f'[zones]\ndirectory = {json.dumps(zones)}\n'
                    '[log]\nlevel = "info"\nformat = "json"\n'
                    f'[geoip]\ncity = {json.dumps(os.path.join(geo, "sample-city.mmdb"))}\n'
                    f'asn = {json.dumps(os.path.join(geo, "sample-asn.mmdb"))}\n'
                    f'[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
                    f'state_file = {json.dumps(os.path.join(d, "state.json"))}\n'
                    f'[cluster]\netcd = {etcd.endpoints_toml()}\ninstance = "{name}"\n'
                    f'prefix = "{prefix}"\n'
                    + "".join(f'{k} = "{v}"\n' for k, v in CLUSTER.items()))
        self.logpath = os.path.join(d, "geosteer.log")
        self.logfile = open(self.logpath, "w")
        self.proc = fr.spawn([binary, "serve", "--config", self.conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.udp_port = self.admin = None
        self.serving = threading.Event()
        self.lock = threading.Lock()
        self.own = []       # (wall, endpoint, from, to, reason): "endpoint state changed"
        self.fleet = []     # (wall, endpoint, up, votes): "fleet verdict changed"
        self.warnings = []  # other WARN/ERROR lines
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.logfile.write(line)
            self.logfile.flush()
            try:
                v = json.loads(line)
            except ValueError:
                continue
            f = v.get("fields", {})
            msg = f.get("message")
            if msg == "listening" and f.get("proto") == "udp" and self.udp_port is None:
                self.udp_port = int(f["addr"].rsplit(":", 1)[1])
            elif msg == "admin API listening":
                self.admin = f.get("addr")
            elif msg == "geosteer serving":
                self.serving.set()
            if msg == "endpoint state changed":
                with self.lock:
                    self.own.append((fo.parse_ts(v["timestamp"]), f.get("endpoint"),
                                     f.get("from"), f.get("to"), f.get("reason", "")))
            elif msg == "fleet verdict changed":
                up = f.get("up")
                if isinstance(up, str):
                    up = up == "true"
                with self.lock:
                    self.fleet.append((fo.parse_ts(v["timestamp"]), f.get("endpoint"), up,
                                       f.get("votes", "")))
            elif v.get("level") in ("WARN", "ERROR"):
                with self.lock:
                    self.warnings.append(line.strip())
        self.serving.set()  # EOF: exited

    def wait_serving(self, deadline):
        if not self.serving.wait(max(0.0, deadline - time.monotonic())):
            raise Abort(f"{self.name} did not log 'geosteer serving' within {START_DEADLINE:.0f} s; "
                        f"see {self.logpath}")
        if self.proc.poll() is not None or self.udp_port is None or self.admin is None:
            raise Abort(f"{self.name} exited during start-up (status {self.proc.poll()}); log "
                        f"tail:\n{fr.tail(self.logpath)}")

    def mark(self):
        with self.lock:
            return len(self.own), len(self.fleet), len(self.warnings)

    def since(self, mark):
        with self.lock:
            return (list(self.own[mark[0]:]), list(self.fleet[mark[1]:]),
                    list(self.warnings[mark[2]:]))

    def eu_status(self):
        v = fr.http_json(self.admin, "GET", "/api/status", timeout=5.0)
        for p in v.get("profiles", []):
            for e in p.get("endpoints", []):
                if e.get("key") == EU_KEY:
                    return e
        raise Abort(f"{self.name}: no {EU_KEY} in /api/status")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        fr.stop_procs([self.proc])
        self.reader.join(5)
        self.logfile.close()



# ------------------------------------------------------------------ the votes in etcd

class VoteWatch:
    """Watches the instances' vote documents (<prefix>votes/<instance>) through etcd's gRPC
    gateway (POST /v3/watch, a stream of JSON messages), so each vote write is timestamped
    twice: by its writer (`at_ms` in the stored value, taken just before the write) and on
    arrival here (after the commit)."""

    def __init__(self, port, prefix):
        key = (prefix + "votes/").encode()
        end = key[:-1] + bytes([key[-1] + 1])
        b64 = lambda b: base64.b64encode(b).decode()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("POST", "/v3/watch",
                          body=json.dumps({"create_request": {"key": b64(key), "range_end": b64(end)}}),
                          headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise Abort(f"etcd watch on {prefix}votes/: HTTP {self.resp.status}")
        self.conn.sock.settimeout(None)
        self.lock = threading.Lock()
        self.events = []  # (arrival wall, instance, stamped wall, {endpoint: up}, {endpoint: rtt})
        self.created = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        if not self.created.wait(10):
            raise Abort("etcd watch: no created message within 10 s")

    def _read(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                now = time.time()
                try:
                    res = json.loads(line).get("result", {})
                except ValueError:
                    continue
                if res.get("created"):
                    self.created.set()
                for ev in res.get("events", []) or []:
                    if ev.get("type") == "DELETE":
                        continue
                    kv = ev.get("kv", {})
                    try:
                        doc = json.loads(base64.b64decode(kv.get("value", "")))
                    except ValueError:
                        continue
                    eps = (doc.get("value") or {}).get("endpoints") or {}
                    with self.lock:
                        self.events.append((now, doc.get("by"), doc.get("at_ms", 0) / 1000.0,
                                            {k: v.get("up") for k, v in eps.items()},
                                            {k: v.get("rtt_ms") for k, v in eps.items()}))
        except Exception:  # the stream ends (close() below, or etcd gone): stop reading
            return

    def since(self, n):
        with self.lock:
            return list(self.events[n:])

    def mark(self):
        with self.lock:
            return len(self.events)

    def writes(self):
        """Per instance: vote writes seen, and how many of them changed no up/down (RTT-only)."""
        out = {}
        last = {}
        with self.lock:
            evs = list(self.events)
        for _a, by, _s, ups, _r in evs:
            o = out.setdefault(by, {"writes": 0, "rtt_only": 0})
            o["writes"] += 1
            if by in last and last[by] == ups:
                o["rtt_only"] += 1
            last[by] = ups
        return out

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.thread.join(2)
        self.conn.close()


# ------------------------------------------------------------------ DNS polling

class Poller:
    """One connected UDP socket per instance; a round sends one query (mqtt.h.test A, ECS
    81.2.69.0/24) to every instance at once and collects the replies (poll(2))."""

    def __init__(self, ports):
        self.socks, self.by_fd = [], {}
        self.poll = select.poll()
        for i, port in enumerate(ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
            self.poll.register(s.fileno(), select.POLLIN)
            self.by_fd[s.fileno()] = i
        self.queries = self.timeouts = self.rounds = 0

    def round(self):
        """(monotonic start of the round, [answer or None per instance], [reply monotonic or
        None per instance])."""
        n = len(self.socks)
        qids = [random.randrange(1 << 16) for _ in range(n)]
        start = time.monotonic()
        for i in range(n):
            try:
                self.socks[i].send(fr.encode_query(qids[i], NAME))
            except ConnectionRefusedError:
                pass  # an ICMP error from an earlier query; this one was still sent
        self.queries += n
        self.rounds += 1
        ans, at = [None] * n, [None] * n
        give_up = start + QUERY_TIMEOUT
        pending = n
        while pending:
            left = give_up - time.monotonic()
            if left <= 0:
                break
            for fd, _ev in self.poll.poll(left * 1000):
                i = self.by_fd[fd]
                while True:
                    try:
                        data = self.socks[i].recv(4096)
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionRefusedError:
                        raise Abort(f"{INSTANCES[i]}'s UDP port refused a query (exited?)")
                    now = time.monotonic()
                    if ans[i] is None:
                        a = fr.decode_answer(data, qids[i])
                        if a is not None:
                            ans[i], at[i] = a, now
                            pending -= 1
        self.timeouts += pending
        return start, ans, at

    def close(self):
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------ the benchmark

def stats(xs):
    return fr.stats(xs)


class Bench:
    def __init__(self, cfg, fleet, region_map, port, watch):
        self.cfg, self.fleet, self.regions, self.port = cfg, fleet, region_map, port
        self.watch = watch
        self.poller = Poller([g.udp_port for g in fleet])
        self.anomalies = []

    def anomaly(self, msg):
        log(f"    ANOMALY: {msg}")
        self.anomalies.append(msg)

    def check_alive(self):
        for g in self.fleet:
            if not g.alive():
                raise Abort(f"{g.name} exited (status {g.proc.returncode}); log tail:\n"
                            f"{fr.tail(g.logpath)}")

    def wait_formed(self):
        """Every instance connected, sees 3 instances, and holds 3 votes on eu, all up."""
        deadline = time.monotonic() + FLEET_DEADLINE
        for g in self.fleet:
            while True:
                v = fr.http_json(g.admin, "GET", "/api/fleet", timeout=5.0)
                e = g.eu_status()
                votes = e.get("votes") or []
                if (v.get("connected") is True and len(v.get("instances", [])) == 3
                        and len(votes) == 3 and all(x.get("up") for x in votes)
                        and e.get("fleet_up") is True):
                    break
                if time.monotonic() > deadline:
                    raise Abort(f"{g.name}: fleet not formed within {FLEET_DEADLINE:.0f} s "
                                f"(connected {v.get('connected')}, {len(v.get('instances', []))} "
                                f"instances, eu votes {votes}, fleet_up {e.get('fleet_up')})")
                time.sleep(0.1)
        log("fleet formed: 3 instances connected, each holds 3 'up' votes on eu")

    def wait_stable(self, what):
        """Every instance answers eu for STABLE_FOR s without a break, and each one's own eu
        verdict is Online with the 3 votes up (checked at the end of the window)."""
        deadline = time.monotonic() + STABLE_DEADLINE
        since = None
        while True:
            self.check_alive()
            if time.monotonic() > deadline:
                raise Abort(f"{what}: the fleet is not stably on eu within {STABLE_DEADLINE:.0f} s")
            now, ans, _at = self.poller.round()
            if all(a == EU for a in ans):
                since = since or now
                if now - since >= STABLE_FOR:
                    ok = True
                    for g in self.fleet:
                        e = g.eu_status()
                        votes = e.get("votes") or []
                        if not (len(votes) == 3 and all(x.get("up") for x in votes)
                                and e.get("fleet_up") is True):
                            ok = False
                    if ok:
                        return
                    since = None
            else:
                since = None
            time.sleep(0.05)

    def transition(self, t0, want, allowed, what):
        """Poll rounds every POLL_MS from t0 (monotonic) until a round in which every instance
        answers `want`. Returns per-instance first `want` reply (s from t0) and the rounds."""
        step = self.cfg["poll_ms"] / 1000.0
        deadline = t0 + MOVE_DEADLINE
        n = len(self.fleet)
        first = [None] * n
        rounds = []  # (start s from t0, answers)
        odd = set()
        while True:
            start, ans, at = self.poller.round()
            rounds.append((start - t0, ans))
            for i, a in enumerate(ans):
                if a is None:
                    continue
                if a == want:
                    if first[i] is None:
                        first[i] = at[i] - t0
                elif a == allowed:
                    if first[i] is not None and (i, "back") not in odd:
                        odd.add((i, "back"))
                        self.anomaly(f"{what}: {self.fleet[i].name} answered {a} again after "
                                     f"{want} (at +{start - t0:.3f} s)")
                elif (i, a) not in odd:
                    odd.add((i, a))
                    self.anomaly(f"{what}: {self.fleet[i].name} answered {a} (expected "
                                 f"{allowed} until {want})")
            if all(a == want for a in ans) and all(f is not None for f in first):
                break
            if time.monotonic() > deadline:
                raise Abort(f"{what}: not every instance answers {want} within "
                            f"{MOVE_DEADLINE:.0f} s (last round: {ans})")
            if len(rounds) % 100 == 0:
                self.check_alive()
            pause = start + step - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return first, rounds

    def disagreement(self, rounds):
        """Rounds (all answered) in which the instances' answers differ: on the ROUND_MS grid
        (the first round starting at or after each multiple of ROUND_MS from t0) and over all
        rounds; and rounds with a timed-out query."""
        grid = self.cfg["round_ms"] / 1000.0
        sampled, k = [], 0
        for r in rounds:
            if r[0] >= k * grid - 1e-9:
                sampled.append(r)
                k = int(r[0] / grid + 1e-9) + 1
        split = lambda rs: sum(1 for _t, a in rs if None not in a and len(set(a)) > 1)
        return {"grid_rounds": len(sampled), "grid_disagree": split(sampled),
                "rounds": len(rounds), "disagree": split(rounds),
                "incomplete": sum(1 for _t, a in rounds if None in a)}

    def hold(self, t0w, marks, what):
        """eu stays broken HOLD_MIN + 0-1 s after every instance moved, and until every
        instance's own verdict on eu is Degraded; any eu answer meanwhile is a flap."""
        end = time.monotonic() + HOLD_MIN + random.uniform(0.0, 1.0)
        give_up = time.monotonic() + VERDICTS_DEADLINE
        flapped = set()
        while True:
            _s, ans, _at = self.poller.round()
            for i, a in enumerate(ans):
                if a is not None and a != US and i not in flapped:
                    flapped.add(i)
                    self.anomaly(f"{what}: {self.fleet[i].name} answered {a} while eu is down")
            down = all(any(ep == EU_KEY and to == "Degraded" for _t, ep, _f, to, _r in
                           g.since(m)[0]) for g, m in zip(self.fleet, marks))
            now = time.monotonic()
            if now >= end and down:
                return
            if now > give_up:
                self.anomaly(f"{what}: not every instance's own verdict on eu is Degraded "
                             f"{VERDICTS_DEADLINE:.0f} s after t0+move")
                return
            time.sleep(HOLD_POLL)

    def settle(self, marks, what):
        """After the fail-back: polls until every instance's own verdict on eu is Online again
        (the last one comes up to ~1 interval after the majority); any answer other than eu
        meanwhile is a flap."""
        give_up = time.monotonic() + VERDICTS_DEADLINE
        flapped = set()
        while True:
            _s, ans, _at = self.poller.round()
            for i, a in enumerate(ans):
                if a is not None and a != EU and i not in flapped:
                    flapped.add(i)
                    self.anomaly(f"{what}: {self.fleet[i].name} answered {a} after the fail-back")
            up = all(any(ep == EU_KEY and to == "Online" for _t, ep, _f, to, _r in
                         g.since(m)[0]) for g, m in zip(self.fleet, marks))
            if up:
                return
            if time.monotonic() > give_up:
                self.anomaly(f"{what}: not every instance's own verdict on eu is Online "
                             f"{VERDICTS_DEADLINE:.0f} s after the fail-back")
                return
            time.sleep(HOLD_POLL)

    def verdicts(self, marks, t0w, t1w, case, what):
        """From the logs since `marks`: per instance, own eu verdict Degraded/Online and fleet
        verdict down/up, s from t0 / t1. Anything else logged is an anomaly."""
        out = []
        for g, m in zip(self.fleet, marks):
            own, fleet, warns = g.since(m)
            r = {"own_down": None, "own_up": None, "fleet_down": None, "fleet_up": None,
                 "down_reason": None, "up_reason": None}
            seq = [(ep, to) for _t, ep, _f, to, _r in own]
            if seq != [(EU_KEY, "Degraded"), (EU_KEY, "Online")]:
                self.anomaly(f"{what}: {g.name} own state changes {seq} (expected eu Degraded, "
                             "then eu Online)")
            for ts, ep, _f, to, reason in own:
                if ep == EU_KEY and to == "Degraded" and r["own_down"] is None:
                    r["own_down"], r["down_reason"] = ts - t0w, reason
                elif ep == EU_KEY and to == "Online" and r["own_up"] is None:
                    r["own_up"], r["up_reason"] = ts - t1w, reason
            fseq = [(ep, up) for _t, ep, up, _v in fleet]
            if fseq != [(EU_KEY, False), (EU_KEY, True)]:
                self.anomaly(f"{what}: {g.name} fleet verdict changes {fseq} (expected eu down, "
                             "then up)")
            for ts, ep, up, votes in fleet:
                if ep == EU_KEY and up is False and r["fleet_down"] is None:
                    r["fleet_down"], r["down_votes"] = ts - t0w, votes
                elif ep == EU_KEY and up is True and r["fleet_up"] is None:
                    r["fleet_up"], r["up_votes"] = ts - t1w, votes
            for w in warns:
                self.anomaly(f"{what}: {g.name} logged: {w[:400]}")
            want_down = "2 consecutive failed probe(s)"
            if r["down_reason"] and not r["down_reason"].startswith(want_down):
                self.anomaly(f"{what}: {g.name} Degraded reason: {r['down_reason']}")
            if r["up_reason"] and not r["up_reason"].startswith(f"{RECOVERY} consecutive successful"):
                self.anomaly(f"{what}: {g.name} Online reason: {r['up_reason']}")
            if case == "refused" and r["down_reason"] and "refused" not in r["down_reason"].lower():
                self.anomaly(f"{what}: {g.name} refused case, but Degraded because: {r['down_reason']}")
            if case == "blackhole" and r["down_reason"] and "time" not in r["down_reason"].lower():
                self.anomaly(f"{what}: {g.name} black-holed case, but Degraded because: "
                             f"{r['down_reason']}")
            out.append(r)
        return out

    def trial(self, case, k):
        what = f"trial {k} {case}"
        self.wait_stable(what)
        marks = [g.mark() for g in self.fleet]
        wmark = self.watch.mark()
        time.sleep(random.uniform(0.0, 1.0))  # phase against the three probe schedules
        eu = self.regions[EU]
        t0m, t0w = eu.refuse() if case == "refused" else eu.blackhole()
        fail_first, fail_rounds = self.transition(t0m, US, EU, f"{what} failover")
        self.hold(t0w, marks, f"{what} while down")
        t1m, t1w = eu.restore()
        back_first, back_rounds = self.transition(t1m, EU, US, f"{what} fail-back")
        self.settle(marks, f"{what} after fail-back")
        time.sleep(0.1)  # the log lines may trail the answers by a moment
        v = self.verdicts(marks, t0w, t1w, case, what)

        events = self.watch.since(wmark)

        def leg(first, rounds, key_own, key_fleet, t_ref, up):
            owns = sorted(x[key_own] for x in v if x[key_own] is not None)
            quorum = owns[1] if len(owns) >= 2 else None  # the 2nd own verdict of 3 (majority)
            # The deciding instance (2nd own verdict) and its vote write as etcd delivered it.
            decider = next((n for n, x in zip(INSTANCES, v) if x[key_own] == quorum), None)
            vote = next(((a - t_ref, st - t_ref) for a, by, st, ups, _r in events
                         if by == decider and ups.get(EU_KEY) is up and a >= t_ref), None)
            # The decider's previous vote write (any reason): a write less than 100 ms before
            # holds the next one back (votes loop: at most one write per 100 ms).
            prev = None
            if vote:
                prev = max((st for _a, by, st, _u, _r in self.watch.since(0)
                            if by == decider and st < vote[1] + t_ref - 1e-6), default=None)
            if quorum is not None and vote is None:
                self.anomaly(f"{what}: no vote eu={'up' if up else 'down'} from {decider} on the "
                             "etcd watch")
            return {
                "per_instance_s": dict(zip(INSTANCES, first)),
                "first_s": min(first), "last_s": max(first),
                "split_ms": (max(first) - min(first)) * 1000,
                "own_verdicts_s": owns,
                "first_own_s": owns[0] if owns else None,
                "quorum_own_s": quorum,
                "last_own_s": owns[2] if len(owns) >= 3 else None,
                "fleet_verdicts_s": dict(zip(INSTANCES, (x[key_fleet] for x in v))),
                "last_after_quorum_ms": (max(first) - quorum) * 1000 if quorum is not None else None,
                "decider": decider,
                # 2nd own verdict -> its writer stamped the vote (votes loop pickup), stamped ->
                # seen on the watch (etcd commit + delivery), seen -> last instance answers.
                "vote_stamped_ms": (vote[1] - quorum) * 1000 if vote and quorum is not None else None,
                "vote_commit_ms": (vote[0] - vote[1]) * 1000 if vote else None,
                "vote_to_last_ms": (max(first) - vote[0]) * 1000 if vote else None,
                "vote_after_previous_write_ms": ((vote[1] + t_ref - prev) * 1000
                                                 if vote and prev is not None else None),
                "disagreement": self.disagreement(rounds),
            }

        # Wall-clock offsets: first/rounds are from the monotonic t0/t1, verdicts and votes
        # from the wall-clock t0/t1 taken at the same moment.
        fail = leg(fail_first, fail_rounds, "own_down", "fleet_down", t0w, False)
        back = leg(back_first, back_rounds, "own_up", "fleet_up", t1w, True)
        # Majority of 3: nobody may move before the second instance's own verdict.
        for label, lg in (("failover", fail), ("fail-back", back)):
            if lg["quorum_own_s"] is not None and lg["first_s"] < lg["quorum_own_s"] - 0.002:
                self.anomaly(f"{what} {label}: an instance answered the new region at "
                             f"+{lg['first_s']:.3f} s, before the second own verdict "
                             f"(+{lg['quorum_own_s']:.3f} s): no majority yet")
        d1, d2 = fail["disagreement"], back["disagreement"]
        log(f"  {what}: failover last {fail['last_s']:.3f} s, first {fail['first_s']:.3f} s "
            f"(own verdicts {', '.join(f'{x:.3f}' for x in fail['own_verdicts_s'])}), "
            f"{d1['grid_disagree']}/{d1['grid_rounds']} split rounds; fail-back last "
            f"{back['last_s']:.3f} s, first {back['first_s']:.3f} s (own "
            f"{', '.join(f'{x:.3f}' for x in back['own_verdicts_s'])}), "
            f"{d2['grid_disagree']}/{d2['grid_rounds']} split rounds")
        return {"trial": k, "case": case, "t0_unix": t0w, "t1_unix": t1w,
                "failover": fail, "failback": back, "instances": dict(zip(INSTANCES, v))}

    def close(self):
        self.poller.close()


# ------------------------------------------------------------------ report

CASE_LABEL = {"refused": "refused", "blackhole": "black-holed"}


def expected(case, leg):
    """What the settings predict for the last instance (see bench/README.md)."""
    s = INTERVAL + JITTER / 2  # mean probe spacing
    if leg == "failback":
        return (f"~{s / 2 + (RECOVERY - 1) * s:.2f} s mean, {(RECOVERY - 1) * INTERVAL:.1f}-"
                f"{RECOVERY * (INTERVAL + JITTER):.1f} s")
    extra = 0.0 if case == "refused" else TIMEOUT + HEDGE
    return f"~{s / 2 + extra:.2f} s mean, {extra:.1f}-{INTERVAL + JITTER + extra:.1f} s"


def summarize(results, cases):
    s = {}
    for case in cases:
        tr = [t for t in results if t["case"] == case]
        s[case] = {}
        for leg in ("failover", "failback"):
            xs = [t[leg] for t in tr]
            s[case][leg] = {
                "last_s": stats([x["last_s"] for x in xs]),
                "first_s": stats([x["first_s"] for x in xs]),
                "split_ms": stats([x["split_ms"] for x in xs]),
                "first_own_s": stats([x["first_own_s"] for x in xs]),
                "quorum_own_s": stats([x["quorum_own_s"] for x in xs]),
                "last_own_s": stats([x["last_own_s"] for x in xs]),
                "last_after_quorum_ms": stats([x["last_after_quorum_ms"] for x in xs]),
                "vote_stamped_ms": stats([x["vote_stamped_ms"] for x in xs]),
                "vote_commit_ms": stats([x["vote_commit_ms"] for x in xs]),
                "vote_to_last_ms": stats([x["vote_to_last_ms"] for x in xs]),
                "grid_disagree_per_trial": [x["disagreement"]["grid_disagree"] for x in xs],
                "grid_rounds_per_trial": [x["disagreement"]["grid_rounds"] for x in xs],
                "grid_disagree_total": sum(x["disagreement"]["grid_disagree"] for x in xs),
                "grid_rounds_total": sum(x["disagreement"]["grid_rounds"] for x in xs),
                "fine_disagree_total": sum(x["disagreement"]["disagree"] for x in xs),
                "fine_rounds_total": sum(x["disagreement"]["rounds"] for x in xs),
                "incomplete_rounds_total": sum(x["disagreement"]["incomplete"] for x in xs),
                "expected_last": expected(case, leg),
            }
    return s


def report(summary, results, cfg, poller, port, extra, writes):
    cases = cfg["cases"]
    f3 = lambda x: "-" if x is None else f"{x:.3f}"
    f1 = lambda x: "-" if x is None else f"{x:.1f}"
    head = ["measurement", "case", "n", "min", "median", "max", "mean", "expected (settings)"]
    rows = []
    spec = [
        ("failover: t0 -> LAST instance answers us, s", "failover", "last_s", f3, True),
        ("failover: t0 -> first instance answers us, s", "failover", "first_s", f3, False),
        ("failover: t0 -> 1st own verdict Degraded, s", "failover", "first_own_s", f3, False),
        ("failover: t0 -> 2nd own verdict Degraded (majority), s", "failover", "quorum_own_s", f3,
         False),
        ("failover: t0 -> 3rd own verdict Degraded, s", "failover", "last_own_s", f3, False),
        ("failover: 2nd own verdict -> last instance answers us, ms", "failover",
         "last_after_quorum_ms", f1, False),
        ("  of which: 2nd own verdict -> its vote stamped by its writer, ms", "failover",
         "vote_stamped_ms", f1, False),
        ("  of which: vote stamped -> vote on an etcd watch, ms", "failover", "vote_commit_ms", f1,
         False),
        ("  of which: vote on an etcd watch -> last instance answers us, ms", "failover",
         "vote_to_last_ms", f1, False),
        ("failover: first -> last instance answers us, ms", "failover", "split_ms", f1, False),
        ("fail-back: t1 -> LAST instance answers eu, s", "failback", "last_s", f3, True),
        ("fail-back: t1 -> first instance answers eu, s", "failback", "first_s", f3, False),
        ("fail-back: t1 -> 1st own verdict Online, s", "failback", "first_own_s", f3, False),
        ("fail-back: t1 -> 2nd own verdict Online (majority), s", "failback", "quorum_own_s", f3,
         False),
        ("fail-back: t1 -> 3rd own verdict Online, s", "failback", "last_own_s", f3, False),
        ("fail-back: 2nd own verdict -> last instance answers eu, ms", "failback",
         "last_after_quorum_ms", f1, False),
        ("  of which: 2nd own verdict -> its vote stamped by its writer, ms", "failback",
         "vote_stamped_ms", f1, False),
        ("  of which: vote stamped -> vote on an etcd watch, ms", "failback", "vote_commit_ms", f1,
         False),
        ("  of which: vote on an etcd watch -> last instance answers eu, ms", "failback",
         "vote_to_last_ms", f1, False),
        ("fail-back: first -> last instance answers eu, ms", "failback", "split_ms", f1, False),
    ]
    for label, leg, key, fmt, exp in spec:
        for case in cases:
            st = summary[case][leg][key]
            rows.append([label, CASE_LABEL[case]] + (["0", "-", "-", "-", "-"] if st is None else
                        [str(st["n"]), fmt(st["min"]), fmt(st["median"]), fmt(st["max"]),
                         fmt(st["mean"])]) + [summary[case][leg]["expected_last"] if exp else ""])
    t1 = (head, rows, 2)

    head2 = ["transition", "case", f"rounds ({cfg['round_ms']:.0f} ms grid)", "split rounds",
             "split rounds per trial", f"rounds ({cfg['poll_ms']:.0f} ms)", "split", "timed out"]
    rows2 = []
    for leg, label in (("failover", "failover (t0 -> all on us)"),
                       ("failback", "fail-back (t1 -> all on eu)")):
        for case in cases:
            x = summary[case][leg]
            rows2.append([label, CASE_LABEL[case], str(x["grid_rounds_total"]),
                          str(x["grid_disagree_total"]),
                          " ".join(str(d) for d in x["grid_disagree_per_trial"]),
                          str(x["fine_rounds_total"]), str(x["fine_disagree_total"]),
                          str(x["incomplete_rounds_total"])])
    t2 = (head2, rows2, 2)

    head3 = ["trial", "case", "fail last s", "fail first s", "own verdicts s", "split rounds",
             "back last s", "back first s", "own verdicts s", "split rounds"]
    rows3 = []
    for t in results:
        a, b = t["failover"], t["failback"]
        rows3.append([str(t["trial"]), CASE_LABEL[t["case"]], f3(a["last_s"]), f3(a["first_s"]),
                      " ".join(f"{x:.2f}" for x in a["own_verdicts_s"]),
                      f"{a['disagreement']['grid_disagree']}/{a['disagreement']['grid_rounds']}",
                      f3(b["last_s"]), f3(b["first_s"]),
                      " ".join(f"{x:.2f}" for x in b["own_verdicts_s"]),
                      f"{b['disagreement']['grid_disagree']}/{b['disagreement']['grid_rounds']}"])
    t3 = (head3, rows3, 2)

    note1 = (f"3 instances, quorum majority; monitor tcp interval 1s (default), timeout 300ms, "
             f"tolerated_failures 1, recovery 3, jitter 100ms; [cluster] heartbeat "
             f"{CLUSTER['heartbeat']}, lease_ttl {CLUSTER['lease_ttl']}, request_timeout "
             f"{CLUSTER['request_timeout']}; {cfg['trials']} trial(s) per case; answers polled "
             f"every {cfg['poll_ms']:.0f} ms (one query per instance per round, reply time "
             f"counts); endpoints 127.0.0.11-13:{port}; {extra}. Vote writes seen on the etcd "
             f"watch over the run: "
             + ", ".join(f"{n} {w['writes']} ({w['rtt_only']} RTT-only)"
                         for n, w in sorted(writes.items())) + ".")
    note2 = (f"split rounds: rounds in which the three answers differ, counted from t0 (t1) up to "
             f"the first round in which all three answer the new region. The {cfg['round_ms']:.0f} "
             f"ms grid takes the first round at or after each multiple of {cfg['round_ms']:.0f} ms "
             f"(one query per instance per {cfg['round_ms']:.0f} ms, as a client polling at that "
             f"rate would see); the {cfg['poll_ms']:.0f} ms column counts every round.")

    print()
    print("geosteer fleet failover (Fleet II, quorum health): time until every instance answers "
          "the new region for a London client")
    print(fr.table(*t1))
    print(note1)
    print()
    print("Disagreement between the instances during the transition")
    print(fr.table(*t2))
    print(note2)
    print()
    print("Per trial (own verdicts: the three instances' own eu state changes, s from t0 / t1, "
          "sorted)")
    print(fr.table(*t3))
    print()
    print(fr.markdown(*t1))
    print()
    print(note1)
    print()
    print(fr.markdown(*t2))
    print()
    print(note2)
    print()


def main():
    binary = os.environ.get("GEOSTEER_BIN")
    repo = os.environ.get("REPO")
    if not binary or not repo:
        log("error: run this through bench/fleet_failover.sh (GEOSTEER_BIN and REPO unset)")
        return 2
    cfg = {
        "trials": int(os.environ.get("TRIALS", "8")),
        "cases": os.environ.get("CASES", "refused blackhole").split(),
        "poll_ms": float(os.environ.get("POLL_MS", "10")),
        "round_ms": float(os.environ.get("ROUND_MS", "100")),
        "binary": binary,
    }
    for c in cfg["cases"]:
        if c not in CASE_LABEL:
            log(f"error: unknown case {c!r} in CASES (refused, blackhole)")
            return 2
    out_path = os.environ.get("OUT") or "/tmp/fleet-failover.json"
    keep = os.environ.get("KEEP_TMP", "0") == "1"
    seed = os.environ.get("SEED")
    if seed:
        random.seed(int(seed))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    tmp = tempfile.mkdtemp(prefix="geosteer-fleet-failover.")
    log(f"temp dir {tmp}; {cfg}")
    region_map, fleet, bench, watch = {}, [], None, None
    t_start = time.monotonic()
    s0 = fr.steal_sample()
    try:
        port, region_map = regions()
        log(f"regions 127.0.0.11-13:{port} listening")
        etcd = fr.Etcd(tmp)
        prefix = f"/bench-failover-{os.getpid()}/"
        watch = VoteWatch(etcd.client[0], prefix)
        fleet = [Instance(binary, repo, tmp, name, etcd, prefix, port) for name in INSTANCES]
        deadline = time.monotonic() + START_DEADLINE
        for g in fleet:
            g.wait_serving(deadline)
        log(f"3 instances serving (pids {' '.join(str(g.proc.pid) for g in fleet)}; prefix "
            f"{prefix})")
        bench = Bench(cfg, fleet, region_map, port, watch)
        bench.wait_formed()
        bench.wait_stable("start")
        for g in fleet:
            _own, _fl, warns = g.since((0, 0, 0))
            for w in warns:
                bench.anomaly(f"start-up: {g.name} logged: {w[:400]}")
            with g.lock:
                g.warnings.clear()
        results = []
        for k in range(1, cfg["trials"] + 1):
            for case in cfg["cases"]:
                results.append(bench.trial(case, k))
        bench.wait_stable("end")
        s1 = fr.steal_sample()
        steal = (s1[0] - s0[0]) / max(1, s1[1] - s0[1]) * 100
        p = bench.poller
        extra = f"{p.queries:,} queries, {p.timeouts} timed out"
        summary = summarize(results, cfg["cases"])
        writes = watch.writes()
        report(summary, results, cfg, p, port, extra, writes)
        etcd_version = subprocess.run(["etcd", "--version"], capture_output=True,
                                      text=True).stdout.split()
        print(f"Run: {time.monotonic() - t_start:.0f} s; hypervisor steal {steal:.1f} % of CPU "
              f"time; {os.cpu_count()} CPUs, {platform.release()}; etcd "
              f"{etcd_version[2] if len(etcd_version) > 2 else '?'}")
        doc = {"config": cfg, "cluster": CLUSTER, "monitor": MONITOR, "port": port,
               "summary": summary, "trials": results, "anomalies": bench.anomalies,
               "dns_queries": p.queries, "dns_timeouts": p.timeouts, "steal_pct": steal,
               "vote_writes": writes,
               "vote_events": [{"arrival_unix": a, "by": by, "stamped_unix": st, "up": ups,
                                "rtt_ms": rtts} for a, by, st, ups, rtts in watch.since(0)],
               "cpus": os.cpu_count(), "kernel": platform.release(), "finished_unix": time.time()}
        with open(out_path, "w") as f:
            json.dump(doc, f, indent=2)
        log(f"wrote {out_path}")
        if bench.anomalies:
            print(f"ANOMALIES ({len(bench.anomalies)}):")
            for a in bench.anomalies:
                print(f"- {a}")
            return 1
        print("No anomalies: nobody moved before a majority, no flaps, each instance's own and "
              "fleet verdicts changed exactly once each way per trial, no warnings logged.")
        return 0
    except (Abort, fo.Abort) as e:
        log(f"error: {e}")
        if bench and bench.anomalies:
            log(f"anomalies before the abort: {bench.anomalies}")
        keep = True
        return 1
    finally:
        if bench:
            bench.close()
        if watch:
            watch.close()
        for g in fleet:
            g.stop()
        fr.stop_procs(list(fr.CHILDREN))
        for r in region_map.values():
            r.close()
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
