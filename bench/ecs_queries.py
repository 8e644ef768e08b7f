#!/usr/bin/env python3
"""Write a dnsperf binary query file (`dnsperf -B`) whose queries each carry a
different EDNS Client Subnet (RFC 7871) option.

dnsperf's text query format cannot vary EDNS options per line (`-E code:hex`
applies one option to every query), but its `-B` mode replays raw DNS
messages, each preceded by a 2-byte big-endian length (RFC 1035 4.2.2), and
only rewrites the message ID. This script builds such a file.

Example (10,000 distinct /24 subnets against one name):

    python3 bench/ecs_queries.py --name www.example.test --count 10000 \
        --prefix 24 -o /tmp/ecs.bin
    QUERIES=/tmp/ecs.bin bench/dns.sh

Subnets are deterministic and distinct: /N prefix number i is
((i + 1) * 2654435761) mod 2**N, a bijection on N-bit integers, so the prefixes are
spread over the whole address space instead of counting up from 0.0.0.0.
"""
import argparse
import ipaddress
import struct
import sys

QTYPES = {"A": 1, "NS": 2, "SOA": 6, "TXT": 16, "AAAA": 28, "ANY": 255}
ECS_OPTION = 8


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def ecs_option(addr: ipaddress._BaseAddress, prefix: int) -> bytes:
    family = 1 if addr.version == 4 else 2
    nbytes = (prefix + 7) // 8
    data = struct.pack("!HBB", family, prefix, 0) + addr.packed[:nbytes]
    return struct.pack("!HH", ECS_OPTION, len(data)) + data


def query(name: bytes, qtype: int, option: bytes, payload: int) -> bytes:
    # ID 0 (dnsperf overwrites it), flags 0 (RD clear: we ask an authoritative).
    header = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 1)
    question = name + struct.pack("!HH", qtype, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, payload, 0, len(option)) + option
    return header + question + opt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="www.example.test", help="query name")
    p.add_argument("--type", default="A", choices=sorted(QTYPES), help="query type")
    p.add_argument("--count", type=int, default=10000, help="number of distinct subnets")
    p.add_argument("--prefix", type=int, default=24, help="ECS source prefix length")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--payload", type=int, default=1232, help="EDNS UDP payload size")
    p.add_argument("-o", "--output", required=True, help="file to write")
    a = p.parse_args()

    bits = 32 if a.family == 4 else 128
    if not 1 <= a.prefix <= bits:
        p.error(f"--prefix must be 1..{bits}")
    if a.count < 1 or a.count > 2 ** a.prefix:
        p.error(f"--count must be 1..{2 ** a.prefix} for /{a.prefix}")

    name = encode_name(a.name)
    qtype = QTYPES[a.type]
    mask = 2 ** a.prefix - 1
    cls = ipaddress.IPv4Address if a.family == 4 else ipaddress.IPv6Address
    with open(a.output, "wb") as f:
        for i in range(a.count):
            net = ((i + 1) * 2654435761) & mask
            addr = cls(net << (bits - a.prefix))
            msg = query(name, qtype, ecs_option(addr, a.prefix), a.payload)
            f.write(struct.pack("!H", len(msg)) + msg)
    print(f"wrote {a.count} queries ({a.name} {a.type}, /{a.prefix}) to {a.output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
