#!/usr/bin/env python3
"""UDP answer latency idle vs under an admin-API flood (driven by bench/admin_flood.sh).

Starts geosteer (GEOSTEER_BIN) on loopback with a generated zone whose one performance profile
has ENDPOINTS endpoints (unmonitored, spread over the globe), then:

  1. idle:  QUERIES sequential UDP queries (A ns.flood.test), round trip each;
  2. flood: CLIENTS threads request /api/map?step=1, /api/map at varying steps, /api/status
            and /metrics back to back for FLOOD seconds, while the same UDP queries are sent
            and /healthz is polled every 200 ms.

Prints a Markdown table: queries, lost (no answer within 1 s), p50, p99, max per phase; admin
responses by status; /healthz worst latency; RSS. Standard library only; stops only the
geosteer it started (by PID); loopback only.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.environ["GEOSTEER_BIN"]
REPO = os.environ["REPO"]
ENDPOINTS = int(os.environ.get("ENDPOINTS", "5000"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
QUERIES = int(os.environ.get("QUERIES", "2000"))
FLOOD = float(os.environ.get("FLOOD", "20"))
WORKERS = int(os.environ.get("WORKERS", "2"))
KEEP_TMP = os.environ.get("KEEP_TMP", "0") == "1"


def log(msg):
    print(f"[admin_flood] {msg}", file=sys.stderr, flush=True)


def write_config(tmp):
    zones = os.path.join(tmp, "zones")
    os.makedirs(zones)
    with open(os.path.join(zones, "flood.test.zone"), "w") as f:
        f.write("$ORIGIN flood.test.\n$TTL 60\n"
                "@ IN SOA ns.flood.test. h.flood.test. 1 7200 3600 1209600 30\n"
                "@ IN NS ns.flood.test.\nns IN A 127.0.0.1\n")
    out = ['[[profile]]\nname = "mqtt"\nmethod = "performance"\nttl = 30\n']
    for i in range(ENDPOINTS):
        lat = -60.0 + ((i * 7919) % 12000) / 100.0
        lon = -180.0 + ((i * 104729) % 36000) / 100.0
        out.append(f'[[profile.endpoint]]\nname = "e{i}"\nlat = {lat}\nlon = {lon}\n'
                   f'targets = ["198.18.{i // 250}.{i % 250 + 1}"]\n')
    with open(os.path.join(zones, "flood.test.toml"), "w") as f:
        f.write("".join(out))
    conf = os.path.join(tmp, "geosteer.toml")
    with open(conf, "w") as f:
        f.write('[server]\nudp = ["127.0.0.1:0"]\ntcp = ["127.0.0.1:0"]\n'
                f"workers = {WORKERS}\n"
                f"[zones]\ndirectory = {json.dumps(zones)}\n"
                '[log]\nlevel = "warn,geosteer::app=info,geosteer::dns=info"\nformat = "json"\n'
                f'[geoip]\ncity = {json.dumps(os.path.join(REPO, "geo", "sample-city.mmdb"))}\n'
                '[admin]\nlisten = "127.0.0.1:0"\n'
                f'state_file = {json.dumps(os.path.join(tmp, "state.json"))}\n'
                "[rrl]\nenabled = false\n")
    return conf


def die_with_parent():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start(conf, logpath):
    logfile = open(logpath, "w")
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    proc = subprocess.Popen([BIN, "serve", "--config", conf], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=die_with_parent)
    udp = admin = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        logfile.write(line)
        try:
            f = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if f.get("message") == "listening" and f.get("proto") == "udp" and udp is None:
            host, port = f["addr"].rsplit(":", 1)
            udp = (host, int(port))
        elif f.get("message") == "admin API listening":
            admin = f["addr"]
        elif f.get("message") == "geosteer serving":
            break
    # Keep draining stderr so geosteer never blocks on a full pipe.
    threading.Thread(target=lambda: [logfile.write(l) for l in proc.stderr], daemon=True).start()
    if udp is None or admin is None:
        proc.kill()
        sys.exit(f"geosteer did not start; see {logpath}")
    return proc, udp, admin


def get(admin, path, timeout=30):
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return None


def query_bytes(qid):
    q = b"".join(bytes([len(l)]) + l.encode() for l in ["ns", "flood", "test"]) + b"\0"
    return struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


def measure(udp, n, stop_after=None, until=None):
    """Sequential queries: n of them, or until `until()` is true (at least n)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    rtts, lost, i = [], 0, 0
    while True:
        i += 1
        qid = i & 0xFFFF
        t = time.perf_counter()
        s.sendto(query_bytes(qid), udp)
        ok = False
        while True:
            try:
                data, _ = s.recvfrom(1500)
            except socket.timeout:
                break
            if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == qid:
                ok = True
                break
        if ok:
            rtts.append(time.perf_counter() - t)
        else:
            lost += 1
        if i >= n and (until is None or until()):
            break
        if i >= 2_000_000:
            break
    s.close()
    return sorted(rtts), lost


def pct(xs, p):
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] * 1000


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    tmp = tempfile.mkdtemp(prefix="geosteer-adminflood.")
    conf = write_config(tmp)
    logpath = os.path.join(tmp, "geosteer.log")
    proc, udp, admin = start(conf, logpath)
    log(f"geosteer pid {proc.pid}, udp {udp[0]}:{udp[1]}, admin {admin}, {ENDPOINTS} endpoints")
    try:
        deadline = time.monotonic() + 60
        while get(admin, "/readyz", 5) != 200:
            if time.monotonic() > deadline:
                sys.exit("geosteer not ready within 60 s")
            time.sleep(0.1)
        rss0 = rss_mib(proc.pid)
        log(f"idle: {QUERIES} queries")
        idle, idle_lost = measure(udp, QUERIES)

        stop = threading.Event()
        statuses = {}
        lock = threading.Lock()

        def client(c):
            i = 0
            while not stop.is_set():
                k = (c + i) % 4
                path = ["/api/map?step=1", f"/api/map?step={8 + ((c * 7 + i) % 40) / 2}",
                        "/api/status", "/metrics"][k]
                st = get(admin, path)
                with lock:
                    statuses[st] = statuses.get(st, 0) + 1
                i += 1

        hz = {"worst": 0.0, "failed": 0, "n": 0}

        def healthz():
            while not stop.is_set():
                t = time.perf_counter()
                st = get(admin, "/healthz", 2)
                dt = time.perf_counter() - t
                hz["n"] += 1
                hz["worst"] = max(hz["worst"], dt)
                if st != 200:
                    hz["failed"] += 1
                stop.wait(0.2)

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        threads.append(threading.Thread(target=healthz, daemon=True))
        for t in threads:
            t.start()
        t_end = time.monotonic() + FLOOD
        log(f"flood: {CLIENTS} clients for {FLOOD:.0f} s, queries throughout")

        def over():
            return time.monotonic() >= t_end

        loaded, loaded_lost = measure(udp, QUERIES, until=over)
        stop.set()
        for t in threads:
            t.join(35)
        rss1 = rss_mib(proc.pid)
        # The last admin connection's close returns freed heap to the OS: sample again after
        # the server has seen every close.
        time.sleep(2)
        rss2 = rss_mib(proc.pid)

        print(f"geosteer {ENDPOINTS}-endpoint performance profile, workers = {WORKERS}, "
              f"{CLIENTS} admin clients, flood {FLOOD:.0f} s\n")
        print("| phase | UDP queries | lost | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, xs, lost in (("idle", idle, idle_lost), ("admin flood", loaded, loaded_lost)):
            print(f"| {name} | {len(xs) + lost} | {lost} | {pct(xs, 0.5):.3f} | {pct(xs, 0.99):.3f} "
                  f"| {(xs[-1] * 1000 if xs else float('nan')):.3f} |")
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
        print(f"\nadmin responses by status: {codes}")
        print(f"/healthz during the flood: {hz['n']} polls, {hz['failed']} failed, "
              f"worst {hz['worst'] * 1000:.1f} ms")
        print(f"RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB as the flood ends, "
              f"{rss2:.1f} MiB 2 s later")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if KEEP_TMP:
            log(f"kept {tmp}")
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
