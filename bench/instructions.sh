#!/usr/bin/env bash
# Instructions per query on the answer path (benches/handler.rs under callgrind): exact and
# repeatable for the same binary and inputs, whatever else the machine is doing — unlike the
# QPS figures of bench/dns.sh, which move by ±15 % on a shared VM. Use it to compare two
# commits: a change of 2 % shows here and is lost in dnsperf noise.
#
#   bash bench/instructions.sh                 # static, nxdomain, routed (cached or not); 20,000 queries each
#   QUERIES=50000 bash bench/instructions.sh   # more queries (the count is per query anyway)
#
# Needs valgrind (installed with apt-get if missing, as root). Only loopback-free, in-process
# work: no sockets are opened.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUERIES=${QUERIES:-20000}
[[ $QUERIES =~ ^[1-9][0-9]*$ ]] || { echo "QUERIES must be a positive integer" >&2; exit 2; }
export PATH="$PATH:$HOME/.cargo/bin"

if ! command -v valgrind >/dev/null; then
    (( EUID == 0 )) || { echo "valgrind missing (apt-get install valgrind)" >&2; exit 2; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
fi

cd "$REPO"
bin=$(cargo bench --bench handler --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "handler" and m.get("executable"):
        print(m["executable"])')
[[ -x $bin ]] || { echo "could not build benches/handler.rs" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| workload | queries | instructions/query |"
echo "| --- | ---: | ---: |"
for w in static nxdomain static-uncached nxdomain-uncached routed routed-uncached; do
    out=$tmp/$w.out
    # Count only inside run_queries (the timed loop), not set-up or zone loading.
    QUERIES=$QUERIES valgrind --tool=callgrind --callgrind-out-file="$out" \
        --collect-atstart=no --toggle-collect='*run_queries*' \
        "$bin" --bench "$w" > "$tmp/$w.stdout" 2> "$tmp/$w.stderr" \
        || { cat "$tmp/$w.stderr" >&2; exit 1; }
    n=$(awk '{print $2}' "$tmp/$w.stdout")
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
    [[ -n $n && -n $ir ]] || { echo "no figures for $w" >&2; cat "$tmp/$w.stdout" >&2; exit 1; }
    echo "| $w | $n | $((ir / n)) |"
done
