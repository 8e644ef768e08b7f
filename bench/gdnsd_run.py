#!/usr/bin/env python3
"""geosteer against gdnsd 3 (geoip plugin) on routed answers: the driver of bench/gdnsd.sh.

Both servers get the same job: `mqtt.bench.test A` steered between three regions (Azure
westeurope, eastus, southeastasia, at the coordinates of geo/regions.toml) by the client's
location in the same City database, each region health-checked over TCP (loopback listeners
this script runs on 127.0.0.11-13). geosteer uses its `performance` method, gdnsd its geoip
plugin with `auto_dc_coords` (nearest datacenter by distance). Each server runs pinned to one
core (`SERVER_CPU`, one UDP worker/thread), dnsperf pinned to the other, one server at a time,
`ROUNDS` interleaved rounds (the order alternates). Per run:

- `A, no ECS`: the same query from 127.0.0.1, as fast as dnsperf can send (kQPS per server
  core = QPS / the server's CPU share);
- `A, 10,000 ECS`: 10,000 different /24 ECS subnets (bench/ecs_queries.py), the same;
- `p99 @ 20k`: the ECS file at a fixed 20,000 queries/s, p99 latency from dnsperf -v;
- RSS (VmRSS, and its anonymous part: the file-backed rest is the memory-mapped database).

Environment: GEOIP (City .mmdb, required), GEOSTEER_BIN, ROUNDS (3), DURATION (10 s per
workload), REPO. Prints a Markdown table per round and the medians. Every process it starts is
stopped by PID at the end; traffic stays on loopback.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/ from the imports below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import failover as fo  # noqa: E402  (health listeners on one port of 127.0.0.11-13)
import fleet_run as fr  # noqa: E402  (free loopback ports)

REPO = os.environ.get("REPO") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEOIP = os.environ.get("GEOIP", "")
BIN = os.environ.get("GEOSTEER_BIN") or os.path.join(REPO, "target/release/geosteer")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("CLIENT_CPU", "1")
FIXED_QPS = int(os.environ.get("FIXED_QPS", "20000"))
NAME = "mqtt.bench.test"
REGIONS = [  # name, catalogue region, target, lat, lon (geo/regions.toml)
    ("westeurope", "azure:westeurope", fo.EU, 52.37, 4.90),
    ("eastus", "azure:eastus", fo.US, 37.37, -79.82),
    ("southeastasia", "azure:southeastasia", fo.ASIA, 1.29, 103.85),
]
PROCS = []


def log(msg):
    print(f"[gdnsd-bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    """A loopback port free for UDP and TCP (as bench/dns.sh picks them)."""
    return fr.free_ports(1)[0]


def health_listeners():
    """The three regions' 'load balancers' on one port free on all three addresses: each
    accepts and closes (failover.Healthy)."""
    port, socks = fo.shared_port()
    return port, [fo.Healthy(ip, port, sock) for ip, sock in zip((fo.EU, fo.US, fo.ASIA), socks)]


def start(cmd, log_path):
    f = open(log_path, "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def dig(port, ecs=None):
    args = ["dig", "@127.0.0.1", "-p", str(port), NAME, "A", "+short", "+time=1", "+tries=1"]
    if ecs:
        args.append(f"+subnet={ecs}")
    r = subprocess.run(args, capture_output=True, text=True)
    return r.stdout.strip()


def wait_answering(name, p, port, log_path, deadline_s=60):
    """Until the name answers, without ECS and for a located ECS subnet."""
    end = time.time() + deadline_s
    while time.time() < end:
        if p.poll() is not None:
            sys.stderr.write(open(log_path).read())
            sys.exit(f"{name} exited before answering")
        a = dig(port)
        if a and ";;" not in a and dig(port, "81.2.69.0/24"):
            return a
        time.sleep(0.2)
    sys.stderr.write(open(log_path).read())
    sys.exit(f"{name} did not answer {NAME} within {deadline_s}s")


def geosteer_config(d, port, admin, hport):
    z = os.path.join(d, "zones")
    os.makedirs(z)
    with open(os.path.join(z, "bench.test.zone"), "w") as f:
        f.write(ZONE_GEOSTEER)
    with open(os.path.join(z, "bench.test.toml"), "w") as f:
        f.write(
            "[[profile]]\nname = \"mqtt\"\nmethod = \"performance\"\nttl = 30\n\n"
            f"[profile.monitor]\nprotocol = \"tcp\"\nport = {hport}\ninterval = \"10s\"\n"
            "timeout = \"2s\"\n"
        )
        for name, region, addr, _, _ in REGIONS:
            f.write(
                f"\n[[profile.endpoint]]\nname = \"{name}\"\nregion = \"{region}\"\n"
                f"targets = [\"{addr}\"]\n"
            )
    cfg = os.path.join(d, "geosteer.toml")
    with open(cfg, "w") as f:
        f.write(
            f"[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nworkers = 1\n\n"
            f"[zones]\ndirectory = \"{z}\"\n\n[geoip]\ncity = \"{GEOIP}\"\n\n"
            f"[admin]\nlisten = \"127.0.0.1:{admin}\"\nstate_file = \"{d}/state.json\"\n\n"
            "[rrl]\nenabled = false\n\n[log]\nlevel = \"warn\"\n"
        )
    return cfg


ZONE_GEOSTEER = """$ORIGIN bench.test.
$TTL 3600
@    IN SOA ns1.bench.test. hostmaster.bench.test. 1 3600 600 86400 60
@    IN NS  ns1.bench.test.
ns1  IN A   127.0.0.1
www  IN A   127.0.0.1
"""


def gdnsd_config(d, port, hport):
    os.makedirs(os.path.join(d, "zones"))
    os.makedirs(os.path.join(d, "geoip"))
    os.symlink(GEOIP, os.path.join(d, "geoip", "City.mmdb"))
    coords = ",\n".join(f"          {n} => [ {lat}, {lon} ]" for n, _, _, lat, lon in REGIONS)
    dcmap = ",\n".join(f"          {n} => {addr}" for n, _, addr, _, _ in REGIONS)
    names = ", ".join(n for n, _, _, _, _ in REGIONS)
    with open(os.path.join(d, "config"), "w") as f:
        f.write(f"""options => {{
  listen => [ 127.0.0.1:{port} ]
  udp_threads => 1
  tcp_threads => 1
  run_dir => {d}/run
  state_dir => {d}/state
}}
service_types => {{
  lb => {{ plugin => tcp_connect, port => {hport}, interval => 10, timeout => 2 }}
}}
plugins => {{ geoip => {{
  maps => {{
    regions => {{
      geoip2_db => City.mmdb,
      datacenters => [ {names} ],
      auto_dc_coords => {{
{coords}
      }}
    }}
  }}
  resources => {{
    mqtt => {{
      map => regions
      service_types => lb
      dcmap => {{
{dcmap}
      }}
    }}
  }}
}}}}
""")
    with open(os.path.join(d, "zones", "bench.test"), "w") as f:
        f.write(ZONE_GEOSTEER.replace("$ORIGIN bench.test.\n", "") + "mqtt 30 DYNA geoip!mqtt\n")


def proc_status(pid):
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(port, pid, file, binary, qps=None):
    args = ["taskset", "-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", file,
            "-l", str(DURATION), "-c", "4", "-T", "1", "-q", "100", "-t", "2"]
    if binary:
        args.append("-B")
    if qps:
        args += ["-Q", str(qps), "-v"]
    c0, t0 = cpu_seconds(pid), time.time()
    r = subprocess.run(args, capture_output=True, text=True)
    c1, t1 = cpu_seconds(pid), time.time()
    if r.returncode != 0:
        sys.exit(f"dnsperf failed: {r.stderr}")
    m = re.search(r"Queries per second:\s+([\d.]+)", r.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", r.stdout)
    codes = re.search(r"Response codes:\s+(.*)", r.stdout)
    res = {
        "qps": float(m.group(1)),
        "cpu": (c1 - c0) / (t1 - t0),
        "lost": int(lost.group(1)) if lost else -1,
        "codes": codes.group(1).strip() if codes else "?",
    }
    if qps:
        lat = sorted(float(l.split()[-1]) for l in r.stdout.splitlines()
                     if l.startswith("> ") and not l.startswith("> T") and
                     re.match(r"^[\d.]+$", l.split()[-1]))
        res["p99_ms"] = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    return res


def one_run(server, tmp, files):
    d = tempfile.mkdtemp(prefix=f"{server}-", dir=tmp)
    port = free_port()
    hport, listeners = health_listeners()
    log_path = os.path.join(d, "server.log")
    if server == "geosteer":
        cfg = geosteer_config(d, port, free_port(), hport)
        p = start([BIN, "serve", "--config", cfg], log_path)
    else:
        gdnsd_config(d, port, hport)
        p = start(["gdnsd", "-c", d, "start"], log_path)
    try:
        first = wait_answering(server, p, port, log_path)
        london = dig(port, "81.2.69.0/24")
        newyork = dig(port, "23.22.0.0/16")
        singapore = dig(port, "103.1.138.0/24")
        log(f"{server}: no ECS -> {first}; London -> {london}; US east -> {newyork}; "
            f"Singapore -> {singapore}")
        row = {"answers": (london, newyork, singapore)}
        for label, (path, binary) in files.items():
            r = dnsperf(port, p.pid, path, binary)
            log(f"{server}/{label}: {r['qps']:.0f} qps, server CPU {r['cpu'] * 100:.1f} %, "
                f"lost {r['lost']}, codes {r['codes']}")
            row[label] = r
        r = dnsperf(port, p.pid, files["A, 10,000 ECS"][0], True, qps=FIXED_QPS)
        log(f"{server}/p99 @ {FIXED_QPS}: {r['p99_ms']:.3f} ms, lost {r['lost']}")
        row["p99"] = r["p99_ms"]
        row["mem"] = proc_status(p.pid)
        return row
    finally:
        stop(p)
        for h in listeners:
            h.close()


def main():
    if not GEOIP or not os.path.exists(GEOIP):
        sys.exit("GEOIP must name a City .mmdb (bench/gdnsd.sh fetches GeoLite2-City)")
    tmp = tempfile.mkdtemp(prefix="geosteer-gdnsd-")
    try:
        text = os.path.join(tmp, "noecs.txt")
        with open(text, "w") as f:
            f.write(f"{NAME} A\n")
        ecs = os.path.join(tmp, "ecs.bin")
        subprocess.run([sys.executable, os.path.join(REPO, "bench/ecs_queries.py"), "--name", NAME,
                        "--count", "10000", "--prefix", "24", "-o", ecs], check=True)
        files = {"A, no ECS": (text, False), "A, 10,000 ECS": (ecs, True)}
        rows = {"geosteer": [], "gdnsd": []}
        for rnd in range(ROUNDS):
            order = ["geosteer", "gdnsd"] if rnd % 2 == 0 else ["gdnsd", "geosteer"]
            for server in order:
                log(f"round {rnd + 1}/{ROUNDS}: {server}")
                rows[server].append(one_run(server, tmp, files))
        print(report(rows))
    finally:
        for p in list(PROCS):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows):
    def kq(r):
        return r["qps"] / max(r["cpu"], 1e-9) / 1000

    out = [f"GeoIP: {GEOIP}; {ROUNDS} rounds of {DURATION} s per workload; server on CPU "
           f"{SERVER_CPU}, dnsperf on CPU {CLIENT_CPU}", "",
           "| server | round | A no ECS: QPS | kQPS/core | A 10k ECS: QPS | kQPS/core | "
           f"p99 @ {FIXED_QPS // 1000}k q/s (ms) | RSS MiB (anon) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for server, rs in rows.items():
        for i, r in enumerate(rs):
            a, e, m = r["A, no ECS"], r["A, 10,000 ECS"], r["mem"]
            out.append(f"| {server} | {i + 1} | {a['qps']:.0f} | {kq(a):.1f} | {e['qps']:.0f} | "
                       f"{kq(e):.1f} | {r['p99']:.3f} | {m.get('VmRSS', 0):.1f} "
                       f"({m.get('RssAnon', 0):.1f}) |")
    out.append("")
    med = {s: {
        "noecs": statistics.median(kq(r["A, no ECS"]) for r in rs),
        "ecs": statistics.median(kq(r["A, 10,000 ECS"]) for r in rs),
        "p99": statistics.median(r["p99"] for r in rs),
    } for s, rs in rows.items()}
    g, d = med["geosteer"], med["gdnsd"]
    out.append(f"medians, kQPS per server core: A no ECS geosteer {g['noecs']:.1f} / gdnsd "
               f"{d['noecs']:.1f} = {g['noecs'] / d['noecs']:.2f}x; 10k ECS geosteer "
               f"{g['ecs']:.1f} / gdnsd {d['ecs']:.1f} = {g['ecs'] / d['ecs']:.2f}x; p99 @ "
               f"{FIXED_QPS // 1000}k: geosteer {g['p99']:.3f} ms, gdnsd {d['p99']:.3f} ms")
    return "\n".join(out)


if __name__ == "__main__":
    main()
