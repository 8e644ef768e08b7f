#!/usr/bin/env python3
"""Fleet benchmark for geosteer: a drill through one instance, seen by N instances on etcd.

Started by bench/fleet.sh (which builds the binary and installs dnsperf); see bench/README.md.
Standard library only, Linux only, loopback only. It runs:

  - a real 3-member etcd cluster (Debian's etcd 3.4, the flags of tests/common/etcd.rs);
  - N geosteer instances (N in SIZES, default "3 9") with `[cluster]` at its default settings,
    all on the repository's zones, each on ports it picked itself (read back from its log);

and measures, for each N:

  1. drill propagation, TRIALS times: `POST /api/drills` (westeurope of mqtt, DRILL long) on one
     instance (a different one each trial), then
       (a) from outside: a tight loop of UDP queries (mqtt.example.test A, ECS 81.2.69.0/24) to
           every instance; the first moved answer (198.51.100.20) per instance, from the moment
           the POST was sent, and the first reverted answer (198.51.100.10), from the drill's
           expiry (until_unix * 1000, wall clock);
       (b) from inside: the instances' own rows (`fleet.rows`: max moved_ms, max back_ms);
  2. etcd traffic per instance (geosteer_cluster_etcd_{requests,bytes}_total), at rest (REST
     seconds, before and after the trials) and over each drill (from just before the POST to
     the drill done with every row back);
  3. (N = 3 only) DNS throughput with dnsperf against one instance, the same binary standalone
     (no [cluster]) and as a fleet member, DURATION seconds each.

Environment: GEOSTEER_BIN, REPO, TRIALS (8), SIZES ("3 9"), DRILL ("4s"), REST (20),
DURATION (10), ROUNDS (1), POLL_MS (1), SERVER_CPU (0), CLIENT_CPU (1), OUT
(bench/fleet-results.json), KEEP_TMP (0), SEED (random).
Tables go to stdout, progress to stderr.
"""

import ctypes
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "bench-token-0123456789"
NAME = "mqtt.example.test"
WESTEUROPE = "198.51.100.10"   # London's answer normally
EASTUS = "198.51.100.20"       # London's answer while westeurope is drilled
ECS = (1, 24, bytes([81, 2, 69]))  # IPv4, /24, 81.2.69.0 (London in geo/sample-city.mmdb)
DRILL_BODY = '{{"profile":"mqtt","endpoint":"westeurope","duration":"{d}","scope":[]}}'

# [cluster] settings written into every fleet member's config: geosteer's defaults, spelled out.
CLUSTER_DEFAULTS = {"heartbeat": "1s", "lease_ttl": "10s", "request_timeout": "2s",
                    "start_timeout": "5s"}

START_DEADLINE = 30.0     # s for a geosteer to log "geosteer serving"
ETCD_READY = 30.0         # s for the etcd cluster to be healthy
FLEET_DEADLINE = 30.0     # s for every instance to see the whole fleet
QUERY_TIMEOUT = 0.200     # s to wait for one DNS reply (then it is sent again next round)
MOVE_DEADLINE = 20.0      # s from the POST for every instance to answer the moved answer
REVERT_DEADLINE = 20.0    # s from the expiry for every instance to answer the old answer again
DONE_DEADLINE = 40.0      # s from the expiry for the drill to be done with every row back
HOLD_POLL = 0.050         # s between checks while a drill holds (flaps are anomalies)
STOP_GRACE = 10.0         # s a process gets after SIGTERM before SIGKILL


def log(msg):
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    pass


# ------------------------------------------------------------------ processes

CHILDREN = []  # every Popen this script started (and only those), stopped on exit


def die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGTERM if this script dies without cleaning up.
    # (Children are only ever started from the main thread: the signal follows the thread.)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def spawn(argv, **kw):
    env = kw.pop("env", None)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, env=env, **kw)
    CHILDREN.append(p)
    return p


def stop_procs(procs):
    """SIGTERM to each (by its own PID), then a bounded wait, then SIGKILL."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + STOP_GRACE
    for p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for p in procs:
        if p in CHILDREN:
            CHILDREN.remove(p)


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def steal_sample():
    """(steal, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[7], sum(v)


def free_ports(n):
    """n distinct loopback ports, each free for TCP and UDP a moment ago (held until all found)."""
    held, ports = [], []
    try:
        for _ in range(50 * n):
            if len(ports) == n:
                break
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                t.close()
                u.close()
                continue
            held += [t, u]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    if len(ports) < n:
        raise Abort("no free loopback ports")
    return ports


# ------------------------------------------------------------------ HTTP (admin API, etcd)

def http_call(addr, method, path, body=None, token=None, timeout=10.0):
    """(status, body text). addr = "ip:port"; the Host header is ip:port."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Host": addr, "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def http_json(addr, method, path, body=None, token=None, timeout=10.0):
    status, text = http_call(addr, method, path, body, token, timeout)
    if status != 200:
        raise Abort(f"{method} http://{addr}{path}: HTTP {status}: {text.strip()[:500]}")
    return json.loads(text)


# ------------------------------------------------------------------ etcd

class Etcd:
    """A 3-member etcd cluster on loopback (the flags of tests/common/etcd.rs)."""

    def __init__(self, tmp, n=3):
        self.procs = []
        last = ""
        for attempt in range(1, 5):
            d = os.path.join(tmp, f"etcd-{attempt}")
            os.makedirs(d)
            ports = free_ports(2 * n)
            self.client = [ports[2 * i] for i in range(n)]
            peer = [ports[2 * i + 1] for i in range(n)]
            initial = ",".join(f"m{i}=http://127.0.0.1:{peer[i]}" for i in range(n))
            token = f"geosteer-bench-{os.getpid()}-{time.time_ns()}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
            self.logs = []
            self.procs = []
            for i in range(n):
                c, p = f"http://127.0.0.1:{self.client[i]}", f"http://127.0.0.1:{peer[i]}"
                logpath = os.path.join(d, f"m{i}.log")
                self.logs.append(logpath)
                with open(logpath, "w") as lf:
                    self.procs.append(spawn(
                        ["etcd", "--name", f"m{i}", "--data-dir", os.path.join(d, f"m{i}.etcd"),
                         "--listen-client-urls", c, "--advertise-client-urls", c,
                         "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                         "--initial-cluster", initial, "--initial-cluster-state", "new",
                         "--initial-cluster-token", token,
                         "--heartbeat-interval", "50", "--election-timeout", "500",
                         "--logger", "zap", "--log-outputs", "stderr", "--enable-v2=false"],
                        stdout=subprocess.DEVNULL, stderr=lf, env=env))
            ok, last = self._wait_ready()
            if ok:
                log(f"etcd: 3 members healthy on 127.0.0.1:{','.join(map(str, self.client))} "
                    f"(pids {' '.join(str(p.pid) for p in self.procs)})")
                return
            stop_procs(self.procs)
            if "address already in use" not in last:
                break
            log(f"etcd start attempt {attempt} lost a port race; again on new ports")
        raise Abort(f"etcd cluster did not start: {last}")

    def _wait_ready(self):
        deadline = time.monotonic() + ETCD_READY
        while True:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    return False, f"member {i} exited ({p.returncode}); log tail:\n{tail(self.logs[i])}"
            healthy = 0
            for port in self.client:
                try:
                    st, text = http_call(f"127.0.0.1:{port}", "GET", "/health", timeout=2.0)
                    if st == 200 and json.loads(text).get("health") == "true":
                        healthy += 1
                except (OSError, ValueError, http.client.HTTPException):
                    pass
            if healthy == len(self.client):
                return True, ""
            if time.monotonic() > deadline:
                return False, f"not healthy within {ETCD_READY:.0f} s; member 0 log tail:\n{tail(self.logs[0])}"
            time.sleep(0.05)

    def endpoints_toml(self):
        return "[" + ", ".join(f'"http://127.0.0.1:{p}"' for p in self.client) + "]"

    def stop(self):
        stop_procs(self.procs)


def tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ geosteer

class Geosteer:
    """One geosteer process; its ports are read back from its JSON log (as tests/common does)."""

    def __init__(self, binary, repo, tmp, name, cluster=None, cpu=None):
        self.name = name
        self.conf = os.path.join(tmp, f"{name}.toml")
        geo = os.path.join(repo, "geo")
        text = ('[server]\nudp = ["127.0.0.1:0"]\ntcp = ["127.0.0.1:0"]\nworkers = 1\n'
                f'[zones]\ndirectory = {json.dumps(os.path.join(repo, "zones"))}\n'
                '[log]\nlevel = "info"\nformat = "json"\n'
                f'[geoip]\ncity = {json.dumps(os.path.join(geo, "sample-city.mmdb"))}\n'
                f'asn = {json.dumps(os.path.join(geo, "sample-asn.mmdb"))}\n'
                f'[admin]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
                f'state_file = {json.dumps(os.path.join(tmp, f"state-{name}.json"))}\n'
                'drill_samples = ["81.2.69.0/24", "216.160.83.0/24"]\n')
        if cluster is not None:
            etcd, prefix = cluster
            text += (f'[cluster]\netcd = {etcd.endpoints_toml()}\ninstance = "{name}"\n'
                     f'prefix = "{prefix}"\n'
                     + "".join(f'{k} = "{v}"\n' for k, v in CLUSTER_DEFAULTS.items()))
        with open(self.conf, "w") as f:
            f.write(text)
        self.logpath = os.path.join(tmp, f"{name}.log")
        self.logfile = open(self.logpath, "w")
        argv = [binary, "serve", "--config", self.conf]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        self.proc = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.udp_port = None
        self.admin = None
        self.serving = threading.Event()
        self.lock = threading.Lock()
        self.warnings = []  # WARN/ERROR log lines
        self.reported = 0   # warnings already reported as anomalies
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
            if v.get("level") in ("WARN", "ERROR"):
                with self.lock:
                    self.warnings.append(line.strip())
        self.serving.set()  # EOF: exited

    def wait_serving(self, deadline):
        if not self.serving.wait(max(0.0, deadline - time.monotonic())):
            raise Abort(f"{self.name} did not log 'geosteer serving' within {START_DEADLINE:.0f} s; "
                        f"see {self.logpath}")
        if self.proc.poll() is not None or self.udp_port is None or self.admin is None:
            raise Abort(f"{self.name} exited during start-up (status {self.proc.poll()}); "
                        f"log tail:\n{tail(self.logpath)}")

    def alive(self):
        return self.proc.poll() is None

    def new_warnings(self):
        """WARN/ERROR lines logged since the last call."""
        with self.lock:
            new = self.warnings[self.reported:]
            self.reported = len(self.warnings)
        return new

    def counters(self):
        """(requests, bytes) of geosteer_cluster_etcd_*_total."""
        _st, text = http_call(self.admin, "GET", "/metrics", timeout=5.0)
        got = {}
        for line in text.splitlines():
            for key in ("geosteer_cluster_etcd_requests_total", "geosteer_cluster_etcd_bytes_total"):
                if line.startswith(key + " ") or line.startswith(key + "{"):
                    got[key] = float(line.rsplit(" ", 1)[1])
        if len(got) != 2:
            raise Abort(f"{self.name}: /metrics has no geosteer_cluster_etcd_* counters")
        return got["geosteer_cluster_etcd_requests_total"], got["geosteer_cluster_etcd_bytes_total"]

    def stop(self):
        stop_procs([self.proc])
        self.reader.join(5)  # it writes the log file until EOF
        self.logfile.close()


# ------------------------------------------------------------------ DNS over UDP, by hand

def encode_query(qid, name=NAME, ecs=ECS):
    header = struct.pack(">HHHHHH", qid, 0x0000, 1, 0, 0, 1)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    question = qname + struct.pack(">HH", 1, 1)  # A IN
    family, source, addr = ecs
    opt_data = struct.pack(">HBB", family, source, 0) + addr
    option = struct.pack(">HH", 8, len(opt_data)) + opt_data
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(option)) + option
    return header + question + opt


def skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def decode_answer(msg, qid):
    """The answer as a string ("a.b.c.d[,…]", "nodata", "rcodeN"), or None if not our reply."""
    if len(msg) < 12:
        return None
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    if rid != qid or not flags & 0x8000:
        return None
    if flags & 0x000F:
        return f"rcode{flags & 0x000F}"
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    addrs = []
    for _ in range(an):
        off = skip_name(msg, off)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[off:off + 4]))
        off += rdlen
    return ",".join(sorted(addrs)) if addrs else "nodata"


class Poller:
    """One connected UDP socket per instance; a round sends one query to each instance asked
    and collects the replies (single thread, poll(2)), so a round over 9 instances takes well
    under a millisecond on loopback."""

    def __init__(self, ports):
        self.socks = []
        self.poll = select.poll()
        self.by_fd = {}
        for i, port in enumerate(ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
            self.poll.register(s.fileno(), select.POLLIN)
            self.by_fd[s.fileno()] = i
        self.queries = 0
        self.timeouts = 0
        self.rounds = 0

    def round(self, which):
        """Queries every instance index in `which`; {index: (monotonic, wall, answer)} for the
        replies that came within QUERY_TIMEOUT (the others are counted as timeouts)."""
        qids = {}
        for i in which:
            qid = random.randrange(1 << 16)
            qids[i] = qid
            try:
                self.socks[i].send(encode_query(qid))
            except ConnectionRefusedError:
                pass  # an ICMP error from an earlier query; this one was still sent
            self.queries += 1
        self.rounds += 1
        got = {}
        give_up = time.monotonic() + QUERY_TIMEOUT
        while len(got) < len(qids):
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
                        raise Abort(f"instance {i}'s UDP port refused a query (exited?)")
                    now_m, now_w = time.monotonic(), time.time()
                    if i in qids and i not in got:
                        ans = decode_answer(data, qids[i])
                        if ans is not None:
                            got[i] = (now_m, now_w, ans)
        self.timeouts += len(qids) - len(got)
        return got

    def close(self):
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------ statistics, formatting

def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs),
            "mean": statistics.fmean(xs)}


def table(head, rows, right_from=1):
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    out = []
    for r in [head] + rows:
        cells = [(str(c).ljust(w) if i < right_from else str(c).rjust(w))
                 for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def markdown(head, rows, right_from=1):
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(" --- " if i < right_from else " ---: " for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def f0(x):
    return "-" if x is None else f"{x:,.0f}"


def f1(x):
    return "-" if x is None else f"{x:,.1f}"


# ------------------------------------------------------------------ the benchmark

class Bench:
    def __init__(self, binary, repo, tmp, cfg):
        self.binary, self.repo, self.tmp, self.cfg = binary, repo, tmp, cfg
        self.anomalies = []
        self.results = {"sizes": {}, "throughput": None}

    def anomaly(self, msg):
        log(f"  ANOMALY: {msg}")
        self.anomalies.append(msg)

    # -------------------------------------------------------------- fleet lifecycle

    def start_fleet(self, etcd, n):
        prefix = f"/bench-n{n}/"
        fleet = [Geosteer(self.binary, self.repo, self.tmp, f"gs-{i + 1}", (etcd, prefix))
                 for i in range(n)]
        deadline = time.monotonic() + START_DEADLINE
        for g in fleet:
            g.wait_serving(deadline)
        log(f"N={n}: {n} instances serving (prefix {prefix}; pids "
            f"{' '.join(str(g.proc.pid) for g in fleet)})")
        deadline = time.monotonic() + FLEET_DEADLINE
        for g in fleet:
            while True:
                v = http_json(g.admin, "GET", "/api/fleet")
                if v.get("connected") is True and len(v.get("instances", [])) == n:
                    break
                if time.monotonic() > deadline:
                    raise Abort(f"N={n}: {g.name} does not see the fleet within {FLEET_DEADLINE:.0f} s "
                                f"(connected {v.get('connected')}, {len(v.get('instances', []))} instances)")
                time.sleep(0.05)
        log(f"N={n}: every instance connected and sees {n} instances")
        return fleet

    def warnings(self, procs, what):
        """Every WARN/ERROR line a geosteer logged since the last check is an anomaly."""
        for g in procs:
            for w in g.new_warnings():
                self.anomaly(f"{what}: {g.name} logged: {w[:400]}")

    def check_alive(self, fleet):
        for g in fleet:
            if not g.alive():
                raise Abort(f"{g.name} exited (status {g.proc.returncode}); log tail:\n{tail(g.logpath)}")

    # -------------------------------------------------------------- etcd traffic at rest

    def rest(self, fleet, label):
        seconds = self.cfg["rest"]
        log(f"N={len(fleet)}: {label}: {seconds:.0f} s with nothing happening")
        t0 = time.monotonic()
        c0 = [g.counters() for g in fleet]
        time.sleep(seconds)  # the measurement window
        c1 = [g.counters() for g in fleet]
        dt = time.monotonic() - t0
        self.check_alive(fleet)
        per = [{"instance": g.name, "requests_per_s": (b[0] - a[0]) / dt,
                "bytes_per_s": (b[1] - a[1]) / dt} for g, a, b in zip(fleet, c0, c1)]
        req, byt = [p["requests_per_s"] for p in per], [p["bytes_per_s"] for p in per]
        log(f"N={len(fleet)}: {label}: per instance {statistics.fmean(req):.2f} req/s, "
            f"{statistics.fmean(byt):,.0f} B/s (max {max(byt):,.0f} B/s)")
        return {"seconds": dt, "per_instance": per,
                "requests_per_s": {"mean": statistics.fmean(req), "min": min(req), "max": max(req)},
                "bytes_per_s": {"mean": statistics.fmean(byt), "min": min(byt), "max": max(byt)}}

    # -------------------------------------------------------------- one drill trial

    def wait_all(self, poller, fleet, want, deadline_s, what):
        """Until every instance answers `want` (no measurement: readiness)."""
        deadline = time.monotonic() + deadline_s
        pending = set(range(len(fleet)))
        last = {}
        while pending:
            self.check_alive(fleet)
            for i, (_m, _w, ans) in poller.round(sorted(pending)).items():
                last[i] = ans
                if ans == want:
                    pending.discard(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise Abort(f"{what}: {', '.join(fleet[i].name for i in sorted(pending))} do not answer "
                            f"{want} within {deadline_s:.0f} s (last: "
                            f"{', '.join(f'{fleet[i].name}={last.get(i)}' for i in sorted(pending))})")
            time.sleep(0.02)

    def first_answer(self, poller, fleet, want, allowed, deadline, what):
        """Tight loop until every instance answered `want` once: {index: (monotonic, wall)} of
        each one's first such reply. Answers other than `want`/`allowed` are anomalies; an
        instance that never answers `want` before `deadline` (monotonic) is an anomaly too."""
        pending = set(range(len(fleet)))
        first, last, odd = {}, {}, set()
        interval = self.cfg["poll_ms"] / 1000.0
        r0, n0 = time.monotonic(), poller.rounds
        while pending and time.monotonic() < deadline:
            start = time.monotonic()
            for i, (m, w, ans) in poller.round(sorted(pending)).items():
                last[i] = ans
                if ans == want:
                    first[i] = (m, w)
                    pending.discard(i)
                elif ans != allowed and (i, ans) not in odd:
                    odd.add((i, ans))
                    self.anomaly(f"{what}: {fleet[i].name} answered {ans} (expected {allowed} "
                                 f"until {want})")
            if poller.rounds % 200 == 0:
                self.check_alive(fleet)
            pause = interval - (time.monotonic() - start)
            if pause > 0:
                time.sleep(pause)
        for i in sorted(pending):
            self.anomaly(f"{what}: {fleet[i].name} never answered {want} within the deadline "
                         f"(last answer: {last.get(i)})")
        rounds = poller.rounds - n0
        period = (time.monotonic() - r0) / rounds * 1000 if rounds else None
        return first, period

    def hold(self, poller, fleet, want, until_wall, what):
        """Light polling while the drill holds: every instance must keep answering `want`."""
        flapped = set()
        while time.time() < until_wall:
            for i, (_m, _w, ans) in poller.round(range(len(fleet))).items():
                if ans != want and i not in flapped:
                    flapped.add(i)
                    self.anomaly(f"{what}: {fleet[i].name} answered {ans} during the drill "
                                 f"(expected {want})")
            time.sleep(max(0.0, min(HOLD_POLL, until_wall - time.time())))

    def trial(self, poller, fleet, n, k):
        what = f"N={n} trial {k}"
        starter = fleet[(k - 1) % n]
        self.wait_all(poller, fleet, WESTEUROPE, 20.0, what)
        self.warnings(fleet, f"before {what}")
        time.sleep(random.uniform(0.0, 1.0))  # phase against heartbeats and the prober's tick
        c0 = [g.counters() for g in fleet]
        t0 = time.monotonic()

        # The POST runs in a thread (it returns once the starter verified its own move); the
        # main thread polls every instance meanwhile.
        sent = threading.Event()
        post = {}

        def do_post():
            host, port = starter.admin.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.connect()
                body = DRILL_BODY.format(d=self.cfg["drill"])
                headers = {"Host": starter.admin, "Connection": "close",
                           "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
                post["sent_m"], post["sent_w"] = time.monotonic(), time.time()
                sent.set()
                conn.request("POST", "/api/drills", body=body, headers=headers)
                r = conn.getresponse()
                post["status"], post["text"] = r.status, r.read().decode("utf-8", "replace")
                post["done_m"] = time.monotonic()
            except Exception as e:  # reported by the main thread
                post["error"] = repr(e)
            finally:
                sent.set()
                conn.close()

        th = threading.Thread(target=do_post, daemon=True)
        th.start()
        if not sent.wait(10):
            raise Abort(f"{what}: could not connect to {starter.name}'s admin API")
        if "sent_m" not in post:
            raise Abort(f"{what}: POST /api/drills to {starter.name}: {post.get('error')}")
        first_moved, period_move = self.first_answer(
            poller, fleet, EASTUS, WESTEUROPE, post["sent_m"] + MOVE_DEADLINE, f"{what} move")
        th.join(30)
        if th.is_alive() or post.get("status") != 200:
            raise Abort(f"{what}: POST /api/drills to {starter.name}: "
                        f"{post.get('status', post.get('error', 'no answer in 30 s'))} "
                        f"{post.get('text', '')[:500]}")
        rec = json.loads(post["text"])["record"]
        drill_id, started_ms, until_unix = rec["id"], rec["started_ms"], rec["until_unix"]
        until_w = until_unix * 1.0
        ext_moved = {fleet[i].name: (m - post["sent_m"]) * 1000 for i, (m, _w) in first_moved.items()}
        ext_moved_started = {fleet[i].name: w * 1000 - started_ms for i, (_m, w) in first_moved.items()}

        # Hold (flaps are anomalies) until shortly before the expiry, then the tight loop again.
        self.hold(poller, fleet, EASTUS, until_w - 0.5, f"{what} hold")
        first_back, period_back = self.first_answer(
            poller, fleet, WESTEUROPE, EASTUS, time.monotonic() + (until_w - time.time()) + REVERT_DEADLINE,
            f"{what} revert")
        ext_back = {fleet[i].name: w * 1000 - until_unix * 1000 for i, (_m, w) in first_back.items()}
        for name, b in ext_back.items():
            if b < 0:
                self.anomaly(f"{what}: {name} answered {WESTEUROPE} again {-b:.1f} ms BEFORE the "
                             f"drill's expiry (until_unix {until_unix})")

        # The drill done, with every instance's row (moved and back).
        deadline = time.monotonic() + (until_w - time.time()) + DONE_DEADLINE
        reader = fleet[k % n]  # not the starter (for n > 1)
        d = None
        while True:
            self.check_alive(fleet)
            ds = http_json(reader.admin, "GET", "/api/drills")
            d = next((x for x in ds if x.get("id") == drill_id), None)
            rows = ((d or {}).get("fleet") or {}).get("rows") or []
            if (d and d.get("status") == "done" and len(rows) >= n
                    and all(r.get("back") is not None for r in rows)):
                break
            if time.monotonic() > deadline:
                self.anomaly(f"{what}: drill {drill_id} not done with {n} rows back within "
                             f"{DONE_DEADLINE:.0f} s of its expiry (status {(d or {}).get('status')}, "
                             f"rows {json.dumps(rows)}, missing {((d or {}).get('fleet') or {}).get('missing')})")
                break
            time.sleep(0.05)
        c1 = [g.counters() for g in fleet]
        t1 = time.monotonic()

        fl = (d or {}).get("fleet") or {}
        rows = fl.get("rows") or []
        for r in rows:
            if r.get("moved") is not True or r.get("back") is not True:
                self.anomaly(f"{what}: drill {drill_id} row of {r.get('instance')}: moved "
                             f"{r.get('moved')} ({r.get('moved_ms')} ms), back {r.get('back')} "
                             f"({r.get('back_ms')} ms), during {r.get('during')}, after {r.get('after')}")
        if d is not None and (fl.get("missing") or fl.get("verified_move") is not True
                              or fl.get("verified_back") is not True):
            self.anomaly(f"{what}: drill {drill_id}: missing {fl.get('missing')}, verified_move "
                         f"{fl.get('verified_move')}, verified_back {fl.get('verified_back')}")
        moved_ms = [r["moved_ms"] for r in rows if r.get("moved_ms") is not None]
        back_ms = [r["back_ms"] for r in rows if r.get("back_ms") is not None]
        complete_rows = len(rows) == n and len(moved_ms) == n and len(back_ms) == n
        self.warnings(fleet, what)

        per_inst = [{"instance": g.name, "requests": b[0] - a[0], "bytes": b[1] - a[1]}
                    for g, a, b in zip(fleet, c0, c1)]
        out = {
            "trial": k, "starter": starter.name, "drill": drill_id, "started_ms": started_ms,
            "until_unix": until_unix,
            "post_sent_wall_ms": post["sent_w"] * 1000,
            "post_returned_ms": (post["done_m"] - post["sent_m"]) * 1000,
            "ext_moved_ms": ext_moved,
            "ext_moved_from_started_ms": ext_moved_started,
            "ext_back_ms": ext_back,
            "ext_last_moved_ms": max(ext_moved.values()) if len(ext_moved) == n else None,
            "ext_last_back_ms": max(ext_back.values()) if len(ext_back) == n else None,
            "rows": rows,
            "rows_max_moved_ms": max(moved_ms) if complete_rows else None,
            "rows_max_back_ms": max(back_ms) if complete_rows else None,
            "poll_period_ms": {"move": period_move, "revert": period_back},
            "etcd": {"window_s": t1 - t0, "per_instance": per_inst},
        }
        log(f"  {what} (start on {starter.name}): last moved {f1(out['ext_last_moved_ms'])} ms "
            f"[rows {f0(out['rows_max_moved_ms'])}], last reverted {f1(out['ext_last_back_ms'])} ms "
            f"[rows {f0(out['rows_max_back_ms'])}]; POST returned in {out['post_returned_ms']:.0f} ms; "
            f"etcd per instance {statistics.fmean(p['requests'] for p in per_inst):.1f} req, "
            f"{statistics.fmean(p['bytes'] for p in per_inst):,.0f} B over {t1 - t0:.1f} s")
        return out

    # -------------------------------------------------------------- throughput

    def dnsperf(self, target, label, qfile):
        cfg = self.cfg
        argv = ["taskset", "-c", str(cfg["client_cpu"]), "dnsperf", "-s", "127.0.0.1",
                "-p", str(target.udp_port), "-d", qfile, "-l", str(cfg["duration"]),
                "-c", "4", "-T", "1", "-q", "100", "-t", "2"]
        log(f"throughput {label}: dnsperf against {target.name} ({cfg['duration']} s)")
        c0, s0, t0 = cpu_ticks(target.proc.pid), steal_sample(), time.monotonic()
        p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=cfg["duration"] + 30)
        except subprocess.TimeoutExpired:
            stop_procs([p])
            raise Abort("dnsperf overran its time limit")
        CHILDREN.remove(p)
        t1, s1, c1 = time.monotonic(), steal_sample(), cpu_ticks(target.proc.pid)
        if p.returncode != 0:
            raise Abort(f"dnsperf failed ({p.returncode}): {err.strip()[:500]}")
        grab = lambda rx: (re.search(rx, out) or [None, None])[1]
        qps, lost = grab(r"Queries per second:\s+([0-9.]+)"), grab(r"Queries lost:\s+([0-9]+)")
        avg, codes = grab(r"Average Latency \(s\):\s+([0-9.]+)"), grab(r"Response codes:\s+(.*)")
        if qps is None:
            raise Abort(f"could not parse dnsperf output:\n{out[-2000:]}")
        if codes and re.search(r"SERVFAIL|REFUSED|FORMERR|NOTIMP", codes):
            self.anomaly(f"throughput {label}: error rcodes from {target.name}: {codes}")
        hz = os.sysconf("SC_CLK_TCK")
        r = {"mode": label, "instance": target.name, "qps": float(qps), "lost": int(lost or 0),
             "avg_ms": float(avg) * 1000 if avg else None, "rcodes": codes,
             "server_cpu_pct": (c1 - c0) / hz / (t1 - t0) * 100,
             "steal_pct": (s1[0] - s0[0]) / max(1, s1[1] - s0[1]) * 100}
        log(f"throughput {label}: {r['qps']:,.0f} qps, lost {r['lost']}, server CPU "
            f"{r['server_cpu_pct']:.0f} %, steal {r['steal_pct']:.0f} %, rcodes {codes}")
        return r

    def throughput(self, fleet):
        cfg = self.cfg
        qfile = os.path.join(self.tmp, "queries.txt")
        with open(qfile, "w") as f:
            for _ in range(500):
                f.write(f"{NAME} A\nwww.example.test A\n")
        alone = Geosteer(self.binary, self.repo, self.tmp, "standalone", None, cfg["server_cpu"])
        alone.wait_serving(time.monotonic() + START_DEADLINE)
        log(f"throughput: standalone geosteer (no [cluster]) serving, pid {alone.proc.pid}, "
            f"CPU {cfg['server_cpu']}; the N={len(fleet)} fleet and etcd stay up, idle")
        member = fleet[0]
        # Pin the fleet member (every thread) to the same CPU as the standalone one.
        subprocess.run(["taskset", "-a", "-p", "-c", str(cfg["server_cpu"]), str(member.proc.pid)],
                       check=True, stdout=subprocess.DEVNULL)
        p = Poller([alone.udp_port, member.udp_port])
        try:
            self.wait_all(p, [alone, member], WESTEUROPE, 10.0, "throughput")
        finally:
            p.close()
        runs = []
        try:
            for _ in range(cfg["rounds"]):
                runs.append(self.dnsperf(alone, "standalone", qfile))
                runs.append(self.dnsperf(member, "cluster", qfile))
                self.check_alive(fleet)
            self.warnings([alone], "throughput")
        finally:
            alone.stop()
            ncpu = os.cpu_count() or 1
            subprocess.run(["taskset", "-a", "-p", "-c", f"0-{ncpu - 1}", str(member.proc.pid)],
                           check=False, stdout=subprocess.DEVNULL)
        return runs

    # -------------------------------------------------------------- one fleet size

    def size(self, etcd, n):
        fleet = self.start_fleet(etcd, n)
        poller = None
        try:
            res = {"n": n, "trials": []}
            self.warnings(fleet, f"N={n} start-up")
            res["rest_fresh"] = self.rest(fleet, "at rest (fresh fleet)")
            poller = Poller([g.udp_port for g in fleet])
            q0, to0 = poller.queries, poller.timeouts
            for k in range(1, self.cfg["trials"] + 1):
                res["trials"].append(self.trial(poller, fleet, n, k))
            res["dns_queries"], res["dns_timeouts"] = poller.queries - q0, poller.timeouts - to0
            res["rest_after"] = self.rest(fleet, "at rest (after the trials)")
            self.warnings(fleet, f"N={n} at rest")
            if n == self.cfg["sizes"][0] and self.cfg["duration"] > 0:
                self.results["throughput"] = self.throughput(fleet)
                self.warnings(fleet, f"N={n} throughput")
            self.results["sizes"][str(n)] = res
        finally:
            if poller:
                poller.close()
            for g in fleet:
                g.stop()
        return res

    # -------------------------------------------------------------- report

    def summarize(self):
        s = {"sizes": {}}
        for n, res in self.results["sizes"].items():
            tr = res["trials"]
            drill_req = [statistics.fmean(p["requests"] for p in t["etcd"]["per_instance"]) for t in tr]
            drill_bytes = [statistics.fmean(p["bytes"] for p in t["etcd"]["per_instance"]) for t in tr]
            drill_bytes_max = [max(p["bytes"] for p in t["etcd"]["per_instance"]) for t in tr]
            windows = [t["etcd"]["window_s"] for t in tr]
            rest_rate = res["rest_fresh"]["bytes_per_s"]["mean"]
            s["sizes"][n] = {
                "ext_last_moved_ms": stats([t["ext_last_moved_ms"] for t in tr]),
                "rows_max_moved_ms": stats([t["rows_max_moved_ms"] for t in tr]),
                "ext_last_back_ms": stats([t["ext_last_back_ms"] for t in tr]),
                "rows_max_back_ms": stats([t["rows_max_back_ms"] for t in tr]),
                "ext_first_moved_ms": stats([min(t["ext_moved_ms"].values()) if t["ext_moved_ms"] else None
                                             for t in tr]),
                "post_returned_ms": stats([t["post_returned_ms"] for t in tr]),
                "poll_period_ms": stats([t["poll_period_ms"]["move"] for t in tr]
                                        + [t["poll_period_ms"]["revert"] for t in tr]),
                "drill_requests_per_instance": stats(drill_req),
                "drill_bytes_per_instance": stats(drill_bytes),
                "drill_bytes_per_instance_max": stats(drill_bytes_max),
                "drill_window_s": stats(windows),
                "drill_bytes_above_rest_per_instance": stats(
                    [b - rest_rate * w for b, w in zip(drill_bytes, windows)]),
            }
        return s

    def report(self, summary):
        cfg = self.cfg
        sizes = list(self.results["sizes"].keys())
        print()
        print(f"geosteer fleet benchmark: drill of mqtt/westeurope ({cfg['drill']}) started on one "
              f"instance (a different one each trial), {cfg['trials']} trials per N; ms")
        head = ["measurement", "N", "n", "min", "median", "max"]
        rows = []
        labels = [
            ("drill start -> last instance moved (external, from the POST)", "ext_last_moved_ms"),
            ("drill start -> last instance moved (rows: max moved_ms)", "rows_max_moved_ms"),
            ("expiry -> last instance reverted (external, from until_unix)", "ext_last_back_ms"),
            ("expiry -> last instance reverted (rows: max back_ms)", "rows_max_back_ms"),
            ("drill start -> first instance moved (external)", "ext_first_moved_ms"),
            ("POST /api/drills returned (from sent)", "post_returned_ms"),
        ]
        for label, key in labels:
            for n in sizes:
                st = summary["sizes"][n][key]
                rows.append([label, n] + (["0", "-", "-", "-"] if st is None else
                             [str(st["n"]), f1(st["min"]), f1(st["median"]), f1(st["max"])]))
        t1 = (head, rows, 2)
        print(table(*t1))
        polls = [summary["sizes"][n]["poll_period_ms"] for n in sizes]
        dnsq = ", ".join(f"N={n}: {self.results['sizes'][n]['dns_queries']:,} queries, "
                         f"{self.results['sizes'][n]['dns_timeouts']} timed out" for n in sizes)
        note1 = ("External: one UDP query per instance per poll round (median round "
                 + ", ".join(f"N={n} {p['median']:.2f} ms" for n, p in zip(sizes, polls) if p)
                 + f"); {dnsq}. Rows: moved_ms from the drill's started_ms, back_ms from its "
                 "expiry; each instance polls its own handler every 20 ms.")
        print(note1)

        print()
        print("etcd traffic per geosteer instance (geosteer_cluster_etcd_*_total; [cluster] "
              f"defaults: heartbeat {CLUSTER_DEFAULTS['heartbeat']}, lease_ttl {CLUSTER_DEFAULTS['lease_ttl']})")
        head2 = ["N", "window", "requests", "bytes", "bytes max instance"]
        rows2 = []
        for n in sizes:
            res, sm = self.results["sizes"][n], summary["sizes"][n]
            for key, label in (("rest_fresh", "at rest, fresh fleet"),
                               ("rest_after", "at rest, after the trials")):
                r = res[key]
                rows2.append([n, f"{label} ({r['seconds']:.0f} s), per s",
                              f"{r['requests_per_s']['mean']:.2f}/s",
                              f"{f0(r['bytes_per_s']['mean'])} B/s", f"{f0(r['bytes_per_s']['max'])} B/s"])
            dq, db, dm, dw = (sm["drill_requests_per_instance"], sm["drill_bytes_per_instance"],
                              sm["drill_bytes_per_instance_max"], sm["drill_window_s"])
            if db:
                rows2.append([n, f"one drill, start -> done (median {dw['median']:.1f} s), median of {db['n']}",
                              f"{dq['median']:.1f}", f"{f0(db['median'])} B", f"{f0(dm['median'])} B"])
                ab = sm["drill_bytes_above_rest_per_instance"]
                rows2.append([n, "  of which above the at-rest rate", "",
                              f"{f0(ab['median'])} B", ""])
        t2 = (head2, rows2, 2)
        print(table(*t2))
        note2 = ("requests and bytes: mean over the instances (bytes = request and response "
                 "bodies, the watch stream included); max instance: the busiest one.")
        print(note2)

        t3 = note3 = None
        if self.results["throughput"]:
            print()
            print("DNS throughput, one instance, same binary, [cluster] off vs on (N=3 fleet and "
                  "etcd running in both)")
            head3 = ["mode", "QPS", "avg ms", "lost", "server CPU %", "kQPS/core", "steal %",
                     "response codes"]
            rows3 = [[r["mode"], f0(r["qps"]), f"{r['avg_ms']:.3f}" if r["avg_ms"] is not None else "-",
                      str(r["lost"]), f"{r['server_cpu_pct']:.0f}",
                      f1(r["qps"] / r["server_cpu_pct"] * 100 / 1000) if r["server_cpu_pct"] > 0 else "-",
                      f"{r['steal_pct']:.0f}", r["rcodes"] or ""]
                     for r in self.results["throughput"]]
            t3 = (head3, rows3, 1)
            print(table(*t3))
            note3 = (f"dnsperf -c 4 -T 1 -q 100 -t 2 -l {cfg['duration']} on CPU {cfg['client_cpu']}, "
                     f"server (workers = 1) pinned to CPU {cfg['server_cpu']}; queries: "
                     f"{NAME} A and www.example.test A, alternating, no ECS; {os.cpu_count()} CPUs, "
                     f"{platform.release()}")
            print(note3)

        print()
        print(markdown(*t1))
        print()
        print(note1)
        print()
        print(markdown(*t2))
        print()
        print(note2)
        if t3:
            print()
            print(markdown(*t3))
            print()
            print(note3)
        print()


def main():
    binary = os.environ.get("GEOSTEER_BIN")
    repo = os.environ.get("REPO")
    if not binary or not repo:
        log("error: run this through bench/fleet.sh (GEOSTEER_BIN and REPO unset)")
        return 2
    cfg = {
        "trials": int(os.environ.get("TRIALS", "8")),
        "sizes": [int(x) for x in os.environ.get("SIZES", "3 9").split()],
        "drill": os.environ.get("DRILL", "4s"),
        "rest": float(os.environ.get("REST", "20")),
        "duration": int(os.environ.get("DURATION", "10")),
        "rounds": int(os.environ.get("ROUNDS", "1")),
        "poll_ms": float(os.environ.get("POLL_MS", "1")),
        "server_cpu": int(os.environ.get("SERVER_CPU", "0")),
        "client_cpu": int(os.environ.get("CLIENT_CPU", "1")),
    }
    out_path = os.environ.get("OUT") or os.path.join(repo, "bench", "fleet-results.json")
    keep = os.environ.get("KEEP_TMP", "0") == "1"
    seed = os.environ.get("SEED")
    if seed:
        random.seed(int(seed))
    # SIGTERM/SIGHUP unwind through the finally below, like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    tmp = tempfile.mkdtemp(prefix="geosteer-fleet.")
    log(f"temp dir {tmp}; {cfg}")
    bench = Bench(binary, repo, tmp, cfg)
    etcd = None
    t_start = time.monotonic()
    s0 = steal_sample()
    try:
        etcd = Etcd(tmp)
        for n in cfg["sizes"]:
            bench.size(etcd, n)
        s1 = steal_sample()
        summary = bench.summarize()
        steal = (s1[0] - s0[0]) / max(1, s1[1] - s0[1]) * 100
        bench.report(summary)
        print(f"Run: {time.monotonic() - t_start:.0f} s; hypervisor steal {steal:.1f} % of CPU time "
              f"over the run; etcd {subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}")
        doc = {"config": cfg, "cluster_settings": CLUSTER_DEFAULTS, "summary": summary,
               "results": bench.results, "anomalies": bench.anomalies, "steal_pct": steal,
               "cpus": os.cpu_count(), "kernel": platform.release(),
               "finished_unix": time.time()}
        with open(out_path, "w") as f:
            json.dump(doc, f, indent=2)
        log(f"wrote {out_path}")
        if bench.anomalies:
            print(f"ANOMALIES ({len(bench.anomalies)}):")
            for a in bench.anomalies:
                print(f"- {a}")
            return 1
        print("No anomalies: every instance moved and reverted in every trial, no flaps, no "
              "warnings logged.")
        return 0
    except Abort as e:
        log(f"error: {e}")
        if bench.anomalies:
            log(f"anomalies before the abort: {bench.anomalies}")
        keep = True
        return 1
    finally:
        stop_procs(list(CHILDREN))
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
