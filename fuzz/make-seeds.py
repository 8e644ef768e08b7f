#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ (deterministic: same files every run).

DNS queries for the names the repository's zones/ and profiles serve, with and without OPT and
ECS; EDNS Client Subnet options valid and invalid; the repository's zone, config and profile
files. Run from anywhere: python3 fuzz/make-seeds.py
"""
import os
import shutil
import struct

FUZZ = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(FUZZ)
CORPUS = os.path.join(FUZZ, "corpus")

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28,
         "OPT": 41, "AXFR": 252, "ANY": 255}


def name(dotted):
    out = b""
    for label in dotted.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def ecs(family, prefix, addr_bytes, scope=0):
    return struct.pack(">HBB", family, prefix, scope) + bytes(addr_bytes)


def query(qname, qtype="A", qid=0x1234, flags=0x0100, opt=None, ecs_data=None, version=0,
          payload=1232, qclass=1, dnssec_ok=False, extra=b""):
    """A query; `opt=True` adds an OPT record (with ECS when `ecs_data` is given)."""
    ar = 1 if opt else 0
    b = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, ar)
    b += name(qname) + struct.pack(">HH", TYPES.get(qtype, qtype) if isinstance(qtype, str)
                                   else qtype, qclass)
    if opt:
        rdata = b""
        if ecs_data is not None:
            rdata += struct.pack(">HH", 8, len(ecs_data)) + ecs_data
        ttl = (version << 16) | (0x8000 if dnssec_ok else 0)
        b += b"\0" + struct.pack(">HHIH", 41, payload, ttl, len(rdata)) + rdata
    return b + extra


LONDON = ecs(1, 24, [81, 2, 69])
US = ecs(1, 24, [216, 160, 83])
TOKYO = ecs(1, 24, [1, 0, 16])
DE6 = ecs(2, 48, [0x2a, 0x01, 0x04, 0xf8, 0, 0])

DNS = {
    "www-a": query("www.example.test"),
    "www-a-mixed-case": query("WwW.ExAmPlE.TeSt"),
    "www-aaaa-opt": query("www.example.test", "AAAA", opt=True),
    "www-a-ecs": query("www.example.test", opt=True, ecs_data=LONDON),
    "www-a-ecs0": query("www.example.test", opt=True, ecs_data=ecs(1, 0, [])),
    "mqtt-a": query("mqtt.example.test"),
    "mqtt-a-opt": query("mqtt.example.test", opt=True),
    "mqtt-a-ecs-london": query("mqtt.example.test", opt=True, ecs_data=LONDON),
    "mqtt-a-ecs-us": query("mqtt.example.test", opt=True, ecs_data=US),
    "mqtt-a-ecs-tokyo": query("mqtt.example.test", opt=True, ecs_data=TOKYO),
    "mqtt-aaaa-ecs6": query("mqtt.example.test", "AAAA", opt=True, ecs_data=DE6),
    "mqtt-cname": query("mqtt.example.test", "CNAME", opt=True),
    "mqtt-any": query("mqtt.example.test", "ANY"),
    "mqtt-txt": query("mqtt.example.test", "TXT", opt=True, ecs_data=US),
    "mqtt-failover-a": query("mqtt-failover.example.test", opt=True),
    "mqtt-canary-a": query("mqtt-canary.example.test", opt=True, ecs_data=LONDON),
    "mqtt-geo-a": query("mqtt-geo.example.test", opt=True, ecs_data=US),
    "why-mqtt-txt": query("_why.mqtt.example.test", "TXT", opt=True, ecs_data=US),
    "why-mqtt-txt-noedns": query("_why.mqtt.example.test", "TXT"),
    "nope-a": query("nope.example.test"),
    "nope-a-opt": query("nope.example.test", opt=True, payload=4096),
    "nope-a-ecs": query("nope.example.test", opt=True, ecs_data=LONDON),
    "apex-soa": query("example.test", "SOA"),
    "apex-ns": query("example.test", "NS", opt=True),
    "apex-mx": query("example.test", "MX"),
    "apex-any": query("example.test", "ANY"),
    "alias-a": query("alias.example.test"),
    "deep-empty-nonterminal": query("b.deep.example.test"),
    "sub-referral": query("host.sub.example.test", opt=True),
    "big-txt-noedns": query("big.example.test", "TXT"),
    "big-txt-512": query("big.example.test", "TXT", opt=True, payload=512),
    "refused-example-org": query("example.org"),
    "refused-root": query("."),
    "axfr": query("example.test", "AXFR"),
    "class-ch": query("example.test", "SOA", qclass=3),
    "qtype-opt": query("example.test", "OPT"),
    "edns-version-1": query("www.example.test", opt=True, version=1),
    "dnssec-ok": query("www.example.test", opt=True, dnssec_ok=True),
    "notify": query("example.test", "SOA", flags=0x2000),
    "opcode-status": query("example.test", "SOA", flags=0x1000),
    "no-question": struct.pack(">HHHHHH", 0x4242, 0x0100, 0, 0, 0, 0),
    "formerr-trailing": query("www.example.test", extra=b"\0"),
    "formerr-bad-ecs": query("www.example.test", opt=True, ecs_data=ecs(1, 24, [81, 2, 69], 8)),
    "response-qr": query("www.example.test", flags=0x8100),
}

ECS = {
    "v4-24": LONDON,
    "v4-0": ecs(1, 0, []),
    "v4-32": ecs(1, 32, [192, 0, 2, 1]),
    "v4-23-odd": ecs(1, 23, [81, 2, 68]),
    "v6-48": DE6,
    "v6-128": ecs(2, 128, [0x20, 0x01, 0x0d, 0xb8] + [0] * 11 + [1]),
    "bad-scope": ecs(1, 24, [81, 2, 69], 8),
    "bad-family": ecs(3, 24, [81, 2, 69]),
    "bad-host-bits": ecs(1, 23, [81, 2, 69]),
    "bad-trailing": ecs(1, 24, [81, 2, 69, 0]),
    "bad-short": ecs(1, 24, [81, 2]),
    "bad-prefix": ecs(1, 33, [1, 2, 3, 4, 5]),
    "runt": b"\0\x01\x18",
}


def write(target, files):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for n, data in files.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(data)


def copy(target, paths):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for p in paths:
        rel = os.path.relpath(p, REPO).replace(os.sep, "-")
        shutil.copyfile(p, os.path.join(d, rel))


def files(directory, suffix):
    d = os.path.join(REPO, directory)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(suffix))


write("dns_request", DNS)
write("ecs_option", ECS)
copy("zone_file", files("zones", ".zone"))
write("zone_file", {
    "minimal": b"$ORIGIN t.\n$TTL 60\n@ IN SOA ns. h. 1 2 3 4 30\n@ IN NS ns.t.\nns IN A 192.0.2.1\n",
    "every-type": b"$TTL 60\n@ SOA ns h (1 2 3 4 5)\n NS ns\nns A 192.0.2.1\n AAAA ::1\n"
                  b"x CNAME ns\n MX 10 ns\n TXT \"a\" \"b\"\nsrv._tcp SRV 0 0 1 ns\n"
                  b"c CAA 0 issue \"ca.example\"\nd SSHFP 1 1 0123456789abcdef\n"
                  b"e PTR ns\nf HINFO \"a\" \"b\"\n",
})
copy("config_toml", [os.path.join(REPO, "geosteer.toml")])
write("config_toml", {
    "server": b"[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\nworkers = 2\nedns_udp_payload = 1232\n"
              b"tcp_idle_timeout = \"10s\"\n",
    "routing": b"[routing]\nserver_lat = 52.1\nserver_lon = 4.3\n[[routing.measured]]\n"
               b"client = \"81.2.69.0/24\"\nregion = \"azure:westeurope\"\nrtt_ms = 9.0\n",
    "admin": b"[admin]\nlisten = \"\"\ntoken = \"0123456789abcdef\"\nwhy_acl = [\"::1/128\"]\n"
             b"query_log_sample = 0.5\n",
})
copy("profiles_toml", files("zones", ".toml"))
write("profiles_toml", {
    "nested": b"[[profile]]\nname = \"top\"\nmethod = \"priority\"\n[[profile.endpoint]]\n"
              b"name = \"eu\"\nprofile = \"eu\"\nmin_child_endpoints = 1\n"
              b"[[profile.endpoint]]\nname = \"us\"\ntargets = [\"192.0.2.2\"]\n"
              b"[[profile]]\nname = \"eu\"\nmethod = \"multivalue\"\nmax_answers = 2\n"
              b"[[profile.endpoint]]\nname = \"a\"\ntargets = [\"192.0.2.3\", \"2001:db8::3\"]\n",
    "subnet-monitor": b"[[profile]]\nname = \"s\"\nmethod = \"subnet\"\n[profile.monitor]\n"
                      b"protocol = \"https\"\npath = \"/h\"\nexpected_status = [\"200\", \"300-302\"]\n"
                      b"headers = { Host = \"x.example\" }\n"
                      b"[[profile.endpoint]]\nname = \"a\"\ntargets = [\"lb.example.net\"]\n"
                      b"subnets = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n[profile.endpoint.monitor]\n"
                      b"protocol = \"mqtts\"\nmqtt_version = \"5\"\ninterval = \"2s\"\n"
                      b"[[profile.endpoint]]\nname = \"b\"\ntargets = [\"192.0.2.9\"]\n",
    "geographic": b"[[profile]]\nname = \"g\"\nmethod = \"geographic\"\n[[profile.endpoint]]\n"
                  b"name = \"eu\"\ngeo = [\"EU\", \"country:AS\", \"US-CA\"]\nlat = 50.0\nlon = 8.0\n"
                  b"targets = [\"192.0.2.1\"]\n[[profile.endpoint]]\nname = \"w\"\n"
                  b"geo = [\"WORLD\"]\ntargets = [\"192.0.2.2\"]\nenabled = false\n",
})
