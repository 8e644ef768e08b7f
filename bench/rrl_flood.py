#!/usr/bin/env python3
"""Spoofer's view of response rate limiting: send N queries at a fixed rate from one source
(default 127.0.0.2, which bench/rrl.sh leaves out of the exempt list) and count what comes
back: answered in full, truncated (slipped), nothing; bytes in and out; amplification.

    python3 bench/rrl_flood.py --server 127.0.0.1:5300 --workload big-ecs --count 15000 --qps 5000

Workloads:
  big-ecs      big.example.test TXT (~800-byte answer), a random /24 ECS option each
  nxdomain     A for a random subdomain of example.test each (NXDOMAIN)
  mqtt-ecs     mqtt.example.test A (routed), a random /24 ECS option each
"""
import argparse
import random
import socket
import struct
import threading
import time


def name(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.strip(".").split(".")) + b"\0"


def query(qid, qname, qtype, ecs):
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 1) + name(qname) + struct.pack(">HH", qtype, 1)
    opt = b""
    if ecs:
        addr = bytes(ecs[:3])
        opt = struct.pack(">HHHBB", 8, 4 + 3, 1, 24, 0) + addr
    return q + b"\0" + struct.pack(">HHIH", 41, 4096, 0, len(opt)) + opt


def subnet():
    a = random.randint(1, 223)
    return [128 if a == 127 else a, random.randint(0, 255), random.randint(0, 255)]


def make(workload, i):
    qid = i & 0xFFFF
    if workload == "big-ecs":
        return query(qid, "big.example.test", 16, subnet())
    if workload == "nxdomain":
        return query(qid, "r%dx%d.example.test" % (random.getrandbits(32), i), 1, None)
    if workload == "mqtt-ecs":
        return query(qid, "mqtt.example.test", 1, subnet())
    raise SystemExit("unknown workload " + workload)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--source", default="127.0.0.2")
    p.add_argument("--workload", default="big-ecs")
    p.add_argument("--count", type=int, default=15000)
    p.add_argument("--qps", type=int, default=5000)
    a = p.parse_args()
    host, port = a.server.rsplit(":", 1)
    dest = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((a.source, 0))
    sock.settimeout(0.5)
    queries = [make(a.workload, i) for i in range(a.count)]
    stats = {"full": 0, "tc": 0, "bytes_out": 0}
    done = threading.Event()

    def reader():
        while True:
            try:
                data = sock.recv(65535)
            except socket.timeout:
                if done.is_set():
                    return
                continue
            stats["bytes_out"] += len(data)
            if len(data) >= 4 and data[2] & 0x02:
                stats["tc"] += 1
            else:
                stats["full"] += 1

    t = threading.Thread(target=reader)
    t.start()
    bytes_in = 0
    start = time.monotonic()
    for i, q in enumerate(queries):
        due = start + i / a.qps
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        sock.sendto(q, dest)
        bytes_in += len(q)
    done.set()
    t.join()
    secs = time.monotonic() - start
    n = a.count
    print("| %s | %d in %.1f s | %d (%.1f %%) | %d | %d | %d | %d | %.2f |" % (
        a.workload, n, secs, stats["full"], 100.0 * stats["full"] / n, stats["tc"],
        n - stats["full"] - stats["tc"], bytes_in, stats["bytes_out"],
        stats["bytes_out"] / max(bytes_in, 1)))


if __name__ == "__main__":
    main()
