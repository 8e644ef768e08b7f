#!/usr/bin/env bash
# Bounded soak: geosteer under steady DNS load (dnsperf, 10,000 distinct ECS subnets against a
# performance profile) while its endpoints flap and its configuration reloads over and over
# (profile file rewritten every 6 s, SIGHUP every 15 s). Reports queries sent/completed/lost,
# SERVFAILs (dnsperf and geosteer's own counter), reloads, reload errors, state changes and RSS
# over time. Exits 1 if any SERVFAIL was answered (or another anomaly was seen), 2 if the run
# could not be completed.
#
# Loopback only (127.0.0.0/8). The queries are written by bench/ecs_queries.py, the run is driven
# by bench/soak_run.py (Python 3, standard library only). See bench/README.md.
#
#   bench/soak.sh                          # build, then 600 s
#   DURATION=120 BUILD=0 bench/soak.sh     # quick run with the existing binary
#   bench/soak.sh > soak.md                # the tables go to stdout, progress to stderr
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$REPO/target/release/geosteer
export PATH="$PATH:$HOME/.cargo/bin"

BUILD=${BUILD:-1}
KEEP_TMP=${KEEP_TMP:-0}
export DURATION=${DURATION:-600}        # seconds of load (dnsperf -l)
export QPS=${QPS:-20000}                # dnsperf -Q: fixed offered load
export CLIENTS=${CLIENTS:-4}            # dnsperf -c
export OUTSTANDING=${OUTSTANDING:-100}  # dnsperf -q
export SUBNETS=${SUBNETS:-10000}        # distinct ECS /24 subnets in the query file
export FLAP_EVERY=${FLAP_EVERY:-5}      # seconds between endpoint toggles
export EDIT_EVERY=${EDIT_EVERY:-6}      # seconds between profile-file rewrites (ttl 30 <-> 60)
export HUP_EVERY=${HUP_EVERY:-15}       # seconds between SIGHUPs
export RSS_EVERY=${RSS_EVERY:-10}       # seconds between RSS samples
export WARMUP=${WARMUP:-30}             # RSS growth is measured from the first sample after this
export RSS_TOLERANCE_MIB=${RSS_TOLERANCE_MIB:-4}  # allowed RSS growth after the warm-up
export WORKERS=${WORKERS:-1}            # [server] workers (geosteer is pinned to one CPU)
export SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}

log() { printf '[soak] %s\n' "$*" >&2; }
die() { printf '[soak] error: %s\n' "$*" >&2; exit 2; }

[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ $SUBNETS =~ ^[1-9][0-9]*$ ]] || die "SUBNETS must be a positive integer"
[[ $(uname -s) == Linux ]] || die "Linux only"
for tool in python3 dnsperf taskset; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install dnsperf util-linux python3)"
done
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs: geosteer and dnsperf share a core"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1)"

TMP=$(mktemp -d /tmp/geosteer-soakq.XXXXXX)
cleanup() { [[ $KEEP_TMP == 1 ]] && log "kept $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM   # replaced once soak_run.py runs: then it is told to stop

export QUERIES=$TMP/ecs.bin
python3 "$SCRIPT_DIR/ecs_queries.py" --name mqtt.soak.test --type A --count "$SUBNETS" \
    --prefix 24 -o "$QUERIES" >&2

# soak_run.py starts geosteer, dnsperf and the endpoint listeners itself and stops exactly
# those (by PID) on exit, also on Ctrl-C / SIGTERM, and via PR_SET_PDEATHSIG if it is killed.
export GEOSTEER_BIN=$BIN REPO KEEP_TMP
python3 "$SCRIPT_DIR/soak_run.py" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
rc=0
while :; do
    wait "$child" && rc=0 || rc=$?
    kill -0 "$child" 2>/dev/null || break   # still running: wait was interrupted by a trap
done
exit "$rc"
