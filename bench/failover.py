#!/usr/bin/env python3
"""Failover benchmark for geosteer at the default monitor settings.

Started by bench/failover.sh (which builds the binary); see bench/README.md. Standard library
only. Everything runs on 127.0.0.0/8:

  - three TCP endpoints, 127.0.0.11 / .12 / .13 on one port P, are Python listeners that accept
    and close connections (the "healthy" state);
  - geosteer serves mqtt.h.test with a performance profile over them, monitor = tcp on P with
    every other setting at its default (interval 1s, timeout 1s, tolerated_failures 1,
    recovery 3, jitter 100ms);
  - a London client (ECS 81.2.69.0/24) is answered 127.0.0.11 while EU is up, else 127.0.0.12.

Per trial, the answer is polled every 10 ms over UDP and the time from the event (listener
closed / accept queue full / listener back) to the first reply carrying the new answer is
recorded. The server's own state-change log lines are timestamped too, so the report also gives
the moment geosteer reached its verdict.

Environment: GEOSTEER_BIN, REPO, TRIALS (8), KEEP_TMP (0), SEED (random).
Tables go to stdout, progress to stderr.
"""

import ctypes
import datetime
import json
import os
import random
import re
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

EU, US, ASIA = "127.0.0.11", "127.0.0.12", "127.0.0.13"
NAME = "mqtt.h.test"
ECS = (1, 24, bytes([81, 2, 69]))  # family IPv4, /24, 81.2.69.0 (London in sample-city.mmdb)

POLL_EVERY = 0.010      # s between query starts
QUERY_TIMEOUT = 0.200   # s to wait for one reply before sending again
MEASURE_DEADLINE = 20.0 # s per measurement
STABLE_FOR = 2.0        # s the EU answer must hold (and EU be Online) before a trial
STABLE_DEADLINE = 30.0  # s to reach that
START_DEADLINE = 20.0   # s for geosteer to report listening
SILENT_CONNECT_TIMEOUT = 0.200

# Default monitor settings (src/health/monitor.rs, src/health/prober.rs), for the expectations.
INTERVAL, TIMEOUT, JITTER, HEDGE_MIN, RECOVERY = 1.0, 1.0, 0.100, 0.100, 3


def log(msg):
    print(f"[failover] {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    pass


# ------------------------------------------------------------------ DNS over UDP, by hand

def encode_query(qid):
    header = struct.pack(">HHHHHH", qid, 0x0000, 1, 0, 0, 1)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in NAME.split(".")) + b"\x00"
    question = qname + struct.pack(">HH", 1, 1)  # A IN
    family, source, addr = ECS
    ecs = struct.pack(">HBB", family, source, 0) + addr
    option = struct.pack(">HH", 8, len(ecs)) + ecs
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
    """(rcode, sorted A addresses, min TTL) or None if the message is not our reply."""
    if len(msg) < 12:
        return None
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", msg[:12])
    if rid != qid or not flags & 0x8000:
        return None
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    addrs, ttls = [], []
    for _ in range(an):
        off = skip_name(msg, off)
        rtype, _cls, ttl, rdlen = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[off:off + 4]))
            ttls.append(ttl)
        off += rdlen
    return flags & 0x000F, tuple(sorted(addrs)), min(ttls) if ttls else None


class Resolver:
    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.timeouts = 0
        self.queries = 0

    def ask(self):
        """One query, retried on timeout. Returns (monotonic time of the reply, answer string)."""
        give_up = time.monotonic() + MEASURE_DEADLINE
        while time.monotonic() < give_up:
            qid = random.randrange(1 << 16)
            self.queries += 1
            self.sock.send(encode_query(qid))
            wait_until = time.monotonic() + QUERY_TIMEOUT
            while True:
                left = wait_until - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    break
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(4096)
                except socket.timeout:
                    self.timeouts += 1
                    break
                except ConnectionRefusedError:
                    raise Abort("geosteer's UDP port refused the query (server gone?)")
                r = decode_answer(data, qid)
                if r is None:
                    continue  # a late reply to an earlier query
                now = time.monotonic()
                rcode, addrs, _ttl = r
                if rcode != 0:
                    return now, f"rcode{rcode}"
                return now, ",".join(addrs) if addrs else "nodata"
        raise Abort(f"no DNS reply within {MEASURE_DEADLINE:.0f} s")

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ endpoint listeners

def bind_listener(ip, port, backlog=128):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(backlog)
    return s


class Healthy:
    """A normal listener: accepts every connection and closes it (so its queue never fills)."""

    def __init__(self, ip, port, sock=None):
        self.ip = ip
        self.sock = sock if sock is not None else bind_listener(ip, port)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
                c.close()
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        """Stops accepting, then closes the socket: new connections are refused from return."""
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


class Silent:
    """A listening socket whose accept queue is full: Linux drops further SYNs silently."""

    def __init__(self, ip, port):
        self.sock = bind_listener(ip, port, backlog=1)
        self.held = []
        self.full_at = None
        for _ in range(16):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(SILENT_CONNECT_TIMEOUT)
            t = time.monotonic(), time.time()
            try:
                c.connect((ip, port))
            except (socket.timeout, OSError):
                c.close()
                break
            self.held.append(c)
            self.full_at = time.monotonic(), time.time()
        else:
            self.close()
            raise Abort(f"{ip}:{port}: 16 connects completed; the accept queue never filled")
        if self.full_at is None:  # not even the first connect completed (a probe got in first)
            self.full_at = t
        log(f"    silent: {len(self.held)} connection(s) fill the queue; the next connect hung")

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


def shared_port():
    """A port free on all three addresses, with the three listeners already bound."""
    for _ in range(50):
        a = bind_listener(EU, 0)
        port = a.getsockname()[1]
        try:
            b = bind_listener(US, port)
        except OSError:
            a.close()
            continue
        try:
            c = bind_listener(ASIA, port)
        except OSError:
            a.close()
            b.close()
            continue
        return port, (a, b, c)
    raise Abort("no TCP port free on 127.0.0.11, .12 and .13 after 50 tries")


# ------------------------------------------------------------------ geosteer

def write_config(tmp, repo, port):
    zones = os.path.join(tmp, "zones")
    os.makedirs(zones)
    with open(os.path.join(zones, "h.test.zone"), "w") as f:
        f.write("$ORIGIN h.test.\n$TTL 60\n@ IN SOA ns.h.test. h.h.test. 1 2 3 4 30\n"
                "@ IN NS ns.h.test.\nns IN A 127.0.0.1\n")
    endpoints = "".join(
        f'[[profile.endpoint]]\nname = "{n}"\nregion = "azure:{r}"\ntargets = ["{ip}"]\n'
        for n, r, ip in [("eu", "westeurope", EU), ("us", "eastus", US),
                         ("asia", "southeastasia", ASIA)])
    with open(os.path.join(zones, "h.test.toml"), "w") as f:
        # Only protocol and port: every other monitor setting stays at its default.
        f.write('[[profile]]\nname = "mqtt"\nmethod = "performance"\nttl = 30\n'
                f'[profile.monitor]\nprotocol = "tcp"\nport = {port}\n' + endpoints)
    conf = os.path.join(tmp, "geosteer.toml")
    with open(conf, "w") as f:
        f.write('[server]\nudp = ["127.0.0.1:0"]\ntcp = ["127.0.0.1:0"]\nworkers = 2\n'
                f'[zones]\ndirectory = {json.dumps(zones)}\n'
                '[log]\nlevel = "info"\nformat = "json"\n'
                f'[geoip]\ncity = {json.dumps(os.path.join(repo, "geo", "sample-city.mmdb"))}\n'
                '[admin]\nlisten = ""\n')
    return conf


def die_with_parent():
    # PR_SET_PDEATHSIG = 1: geosteer gets SIGTERM if this script dies without cleaning up.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def parse_ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class Server:
    def __init__(self, binary, conf, logpath):
        self.logfile = open(logpath, "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)
        log(f"geosteer started, pid {self.proc.pid}")
        self.lock = threading.Lock()
        self.changes = []   # (wall time, endpoint, from, to, reason), in log order
        self.warnings = []  # other WARN/ERROR lines
        self.udp_port = None
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(START_DEADLINE):
            raise Abort(f"geosteer did not log 'listening' (udp) within {START_DEADLINE:.0f} s; "
                        f"see {logpath}")
        if self.udp_port is None:
            raise Abort(f"geosteer exited during startup; see {logpath}")

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
                self.ready.set()
            elif msg == "endpoint state changed":
                with self.lock:
                    self.changes.append((parse_ts(v["timestamp"]), f.get("endpoint"),
                                         f.get("from"), f.get("to"), f.get("reason", "")))
            elif v.get("level") in ("WARN", "ERROR"):
                with self.lock:
                    self.warnings.append(line.strip())
        self.ready.set()  # EOF: exited

    def changes_since(self, index):
        with self.lock:
            return list(self.changes[index:])

    def mark(self):
        with self.lock:
            return len(self.changes), len(self.warnings)

    def state(self, endpoint):
        """Latest logged (state, wall time) of an endpoint, or (None, None)."""
        with self.lock:
            for ts, ep, _f, to, _r in reversed(self.changes):
                if ep == endpoint:
                    return to, ts
        return None, None

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


# ------------------------------------------------------------------ measurement

EU_KEY, US_KEY, ASIA_KEY = "mqtt.h.test./eu", "mqtt.h.test./us", "mqtt.h.test./asia"


class Bench:
    def __init__(self, server, resolver):
        self.s = server
        self.r = resolver
        self.anomalies = []

    def anomaly(self, msg):
        log(f"    ANOMALY: {msg}")
        self.anomalies.append(msg)

    def check_alive(self):
        if not self.s.alive():
            raise Abort(f"geosteer exited (status {self.s.proc.returncode})")

    def wait_for(self, start, want, allowed, what):
        """Polls until the answer is `want`; returns seconds from `start` (monotonic).
        Answers other than `want` and `allowed` are recorded as anomalies."""
        deadline = time.monotonic() + MEASURE_DEADLINE
        seen_bad = set()
        while True:
            self.check_alive()
            t_send = time.monotonic()
            if t_send > deadline:
                raise Abort(f"{what}: the answer did not become {want} within "
                            f"{MEASURE_DEADLINE:.0f} s (last answers seen: {sorted(seen_bad) or allowed})")
            t, ans = self.r.ask()
            if ans == want:
                return t - start
            if ans != allowed and ans not in seen_bad:
                seen_bad.add(ans)
                self.anomaly(f"{what}: unexpected answer {ans} at +{t - start:.3f} s "
                             f"(expected {allowed} until {want})")
            time.sleep(max(0.0, POLL_EVERY - (time.monotonic() - t_send)))

    def hold(self, seconds, want, what):
        """Polls for `seconds`; any answer other than `want` is a flap."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_alive()
            t_send = time.monotonic()
            _t, ans = self.r.ask()
            if ans != want:
                self.anomaly(f"{what}: answer flapped to {ans} (expected {want})")
                return False
            time.sleep(max(0.0, POLL_EVERY - (time.monotonic() - t_send)))
        return True

    def wait_stable(self, what):
        """Until EU is Online (by the log), answered, and both held for STABLE_FOR seconds."""
        deadline = time.monotonic() + STABLE_DEADLINE
        since = None
        while True:
            self.check_alive()
            now = time.monotonic()
            if now > deadline:
                st, _ = self.s.state(EU_KEY)
                raise Abort(f"{what}: EU not stably answered and Online within "
                            f"{STABLE_DEADLINE:.0f} s (EU logged state: {st})")
            _t, ans = self.r.ask()
            st, st_ts = self.s.state(EU_KEY)
            online_for = time.time() - st_ts if st_ts else 0.0
            if ans == EU and st == "Online":
                since = since or now
                if now - since >= STABLE_FOR and online_for >= STABLE_FOR:
                    return
            else:
                since = None
            time.sleep(0.05)

    def verdict(self, mark, t0_wall, to, what):
        """Seconds from t0 to geosteer's logged EU transition to `to` after `mark`, with the
        reason. Other transitions in between are anomalies."""
        for _ in range(100):  # the log line may trail the DNS answer by a moment
            for ts, ep, frm, st, reason in self.s.changes_since(mark):
                if ep == EU_KEY and st == to:
                    return ts - t0_wall, reason
            time.sleep(0.02)
        self.anomaly(f"{what}: no EU -> {to} log line")
        return None, None

    def check_log(self, mark, what, expect):
        """The transitions logged since `mark` must be exactly `expect` ((endpoint, to) pairs,
        in order), and no other warning may have been logged."""
        n, w = mark
        got = self.s.changes_since(n)
        if [(ep, to) for _ts, ep, _f, to, _r in got] != expect:
            for ts, ep, frm, to, reason in got:
                self.anomaly(f"{what}: transition {ep} {frm} -> {to} ({reason}) "
                             f"[expected only {expect}]")
        with self.s.lock:
            extra = [l for l in self.s.warnings[w:] if "endpoint state changed" not in l]
        for l in extra:
            self.anomaly(f"{what}: server warning: {l[:300]}")

    def trial(self, case, listeners, port, i):
        what = f"trial {i} {case}"
        mark0 = self.s.mark()  # contiguous with the previous trial's window
        self.wait_stable(what)
        mark = self.s.mark()
        time.sleep(random.uniform(0.0, 1.0))  # phase relative to the probe schedule
        # Break EU.
        if case == "refused":
            listeners[EU].close()
            t0 = time.monotonic(), time.time()
            broken = None
        else:
            listeners[EU].close()
            broken = Silent(EU, port)
            t0 = broken.full_at
        listeners[EU] = None
        fail = self.wait_for(t0[0], US, EU, f"{what} failover")
        fail_v, fail_reason = self.verdict(mark[0], t0[1], "Degraded", f"{what} failover")
        # Stay broken a little longer (random, so restores do not align with probes either),
        # checking that the answer does not flap back.
        self.hold(1.0 + random.uniform(0.0, 1.0), US, f"{what} while down")
        mark2 = self.s.mark()
        # Restore: a normal listener again.
        if broken is not None:
            broken.close()
        listeners[EU] = Healthy(EU, port)
        t1 = time.monotonic(), time.time()
        back = self.wait_for(t1[0], EU, US, f"{what} fail-back")
        back_v, back_reason = self.verdict(mark2[0], t1[1], "Online", f"{what} fail-back")
        self.check_log(mark0, what, [(EU_KEY, "Degraded"), (EU_KEY, "Online")])
        log(f"  trial {i} {case:8s} failover {fail:6.3f} s (verdict {fmt(fail_v)} s: "
            f"{short(fail_reason)}); fail-back {back:6.3f} s (verdict {fmt(back_v)} s: "
            f"{short(back_reason)})")
        if fail_reason and "2 consecutive failed" not in fail_reason:
            self.anomaly(f"{what}: Degraded reason: {fail_reason}")
        if back_reason and f"{RECOVERY} consecutive successful" not in back_reason:
            self.anomaly(f"{what}: Online reason: {back_reason}")
        return fail, fail_v, back, back_v


def fmt(x):
    return "n/a" if x is None else f"{x:.3f}"


def short(reason):
    if not reason:
        return "?"
    return re.sub(r"TCP connect to [0-9.]+:[0-9]+: ", "", reason)


# ------------------------------------------------------------------ report

def expectations():
    # (a) the next scheduled probe fails at once and its confirmation at once: the wait is the
    #     phase to the next probe, uniform over one interval plus jitter.
    # (b) same phase, then the first probe times out after `timeout`; the hedged second probe,
    #     started HEDGE_MIN later (4x loopback RTT is far below 100 ms), times out after it.
    # (c) first successful probe after the phase, then RECOVERY-1 more intervals.
    per = INTERVAL + JITTER / 2  # mean spacing of probes
    return {
        "a": ("~0.53 s mean, 0-1.1 s", "phase to the next probe (uniform over interval + jitter); "
              "the immediate confirmation adds ~ms"),
        "b": (f"~{per / 2 + TIMEOUT + HEDGE_MIN:.2f} s mean, "
              f"{TIMEOUT + HEDGE_MIN:.1f}-{INTERVAL + JITTER + TIMEOUT + HEDGE_MIN:.1f} s",
              "phase + timeout (1 s) + hedge (100 ms: the parallel probe's timeout decides)"),
        "c": (f"~{per / 2 + (RECOVERY - 1) * per:.2f} s mean, "
              f"{(RECOVERY - 1) * INTERVAL:.1f}-{RECOVERY * (INTERVAL + JITTER):.1f} s",
              "phase to the first good probe + 2 more intervals (3 consecutive successes)"),
    }


def summarize(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return len(xs), min(xs), statistics.median(xs), max(xs), statistics.fmean(xs)


def report(results, trials, port, extra):
    exp = expectations()
    rows = [
        ("(a) refused -> answer changes", "a", results["refused"]["fail"], results["refused"]["fail_v"]),
        ("(b) silent drop -> answer changes", "b", results["silent"]["fail"], results["silent"]["fail_v"]),
        ("(c) fail-back after (a)", "c", results["refused"]["back"], results["refused"]["back_v"]),
        ("(c) fail-back after (b)", "c", results["silent"]["back"], results["silent"]["back_v"]),
        ("(c) fail-back, all", "c", results["refused"]["back"] + results["silent"]["back"],
         results["refused"]["back_v"] + results["silent"]["back_v"]),
    ]
    head = ["measurement", "n", "min s", "median s", "max s", "mean s", "verdict median s",
            "expected (defaults)"]
    body = []
    for label, key, xs, vs in rows:
        s, v = summarize(xs), summarize(vs)
        if s is None:
            continue
        n, lo, med, hi, mean = s
        body.append([label, str(n), f"{lo:.3f}", f"{med:.3f}", f"{hi:.3f}", f"{mean:.3f}",
                     "n/a" if v is None else f"{v[2]:.3f}", exp[key][0]])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    note = (f"geosteer default monitor (tcp, interval 1s, timeout 1s, tolerated_failures 1, "
            f"recovery 3, jitter 100ms); {trials} trial(s) per case; answers polled every "
            f"{POLL_EVERY * 1000:.0f} ms over UDP; endpoint port {port}; {extra}")

    def line(r):
        return "  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))
    print()
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in body:
        print(line(r))
    print(note)
    print()
    print("Expected from the defaults:")
    for k in "abc":
        print(f"  ({k}) {exp[k][0]}: {exp[k][1]}")
    print()
    print("Per-trial answer times, s:")
    for case in ("refused", "silent"):
        for m in ("fail", "back"):
            print(f"  {case:7s} {'failover' if m == 'fail' else 'fail-back':9s} "
                  + " ".join(f"{x:.3f}" for x in results[case][m]))
    print()
    # Markdown
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " if i in (0, 7) else " ---: " for i in range(len(head))) + "|")
    for r in body:
        print("| " + " | ".join(r) + " |")
    print()
    print(note)
    print()


def main():
    binary = os.environ.get("GEOSTEER_BIN")
    repo = os.environ.get("REPO")
    trials = int(os.environ.get("TRIALS", "8"))
    keep = os.environ.get("KEEP_TMP", "0") == "1"
    seed = os.environ.get("SEED")
    if not binary or not repo:
        log("error: run this through bench/failover.sh (GEOSTEER_BIN and REPO unset)")
        return 2
    if seed:
        random.seed(int(seed))
    # SIGTERM/SIGHUP: unwind through the finally below, like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))

    tmp = tempfile.mkdtemp(prefix="geosteer-failover.")
    server = resolver = None
    listeners = {}
    bench = None
    t_start = time.monotonic()
    try:
        port, socks = shared_port()
        for ip, s in zip((EU, US, ASIA), socks):
            listeners[ip] = Healthy(ip, port, s)
        log(f"endpoints 127.0.0.11-13:{port} listening; temp dir {tmp}")
        conf = write_config(tmp, repo, port)
        server = Server(binary, conf, os.path.join(tmp, "geosteer.log"))
        log(f"geosteer answering on 127.0.0.1:{server.udp_port} (udp)")
        resolver = Resolver(server.udp_port)
        bench = Bench(server, resolver)
        _t, first = resolver.ask()
        log(f"first answer for a London client: {first}")
        bench.wait_stable("start")
        for key in (US_KEY, ASIA_KEY):
            if server.state(key)[0] != "Online":
                raise Abort(f"{key} is not Online at the start ({server.state(key)[0]})")
        log(f"all endpoints Online; {trials} trial(s) of each case, interleaved")
        results = {c: {"fail": [], "fail_v": [], "back": [], "back_v": []}
                   for c in ("refused", "silent")}
        for i in range(1, trials + 1):
            for case in ("refused", "silent"):
                fail, fail_v, back, back_v = bench.trial(case, listeners, port, i)
                r = results[case]
                r["fail"].append(fail)
                r["fail_v"].append(fail_v)
                r["back"].append(back)
                r["back_v"].append(back_v)
        for key in (US_KEY, ASIA_KEY):
            if server.state(key)[0] != "Online":
                bench.anomaly(f"{key} ended {server.state(key)[0]}")
        log(f"done in {time.monotonic() - t_start:.0f} s; {resolver.queries} queries, "
            f"{resolver.timeouts} timed out (retried)")
        extra = f"{resolver.timeouts} of {resolver.queries} queries timed out and were retried"
        report(results, trials, port, extra)
        if bench.anomalies:
            print(f"ANOMALIES ({len(bench.anomalies)}):")
            for a in bench.anomalies:
                print(f"- {a}")
            return 1
        print("No anomalies: no flapping, no unexpected answers or state changes.")
        return 0
    except Abort as e:
        log(f"error: {e}")
        if bench and bench.anomalies:
            log(f"anomalies before the abort: {bench.anomalies}")
        log(f"geosteer log: {os.path.join(tmp, 'geosteer.log')} (kept)")
        keep = True
        return 1
    finally:
        if resolver:
            resolver.close()
        if server:
            server.stop()
        for l in listeners.values():
            if l is not None:
                l.close()
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
