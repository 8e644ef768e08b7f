#!/usr/bin/env bash
# UDP answer latency idle vs while the admin API is flooded with its most expensive calls
# (/api/map at step=1 and at varying steps, /api/status, /metrics) on a 5,000-endpoint
# performance profile. Before the admin API got its own thread and runtime, 8 parallel map
# requests raised UDP p50 from 0.15 ms to 187 ms and lost queries outright on large profiles.
#
# Loopback only (127.0.0.0/8). The work is done by bench/admin_flood.py (Python 3, standard
# library only); this wrapper builds geosteer and checks the prerequisites. See bench/README.md.
#
#   bench/admin_flood.sh                        # build, then 2,000 idle queries + 20 s of flood
#   BUILD=0 FLOOD=60 CLIENTS=16 bench/admin_flood.sh
#   bench/admin_flood.sh > admin_flood.md       # the table goes to stdout, progress to stderr
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$REPO/target/release/geosteer
export PATH="$PATH:$HOME/.cargo/bin"

BUILD=${BUILD:-1}
export KEEP_TMP=${KEEP_TMP:-0}
export ENDPOINTS=${ENDPOINTS:-5000}   # endpoints of the generated performance profile
export CLIENTS=${CLIENTS:-8}          # parallel admin-API clients
export QUERIES=${QUERIES:-2000}       # idle UDP queries (and at least as many under load)
export FLOOD=${FLOOD:-20}             # seconds of flood
export WORKERS=${WORKERS:-2}          # [server] workers (DNS threads)

log() { printf '[admin_flood] %s\n' "$*" >&2; }
die() { printf '[admin_flood] error: %s\n' "$*" >&2; exit 2; }

[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
for v in ENDPOINTS CLIENTS QUERIES FLOOD WORKERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ $(uname -s) == Linux ]] || die "Linux only (/proc)"
command -v python3 >/dev/null || die "python3 not found"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --locked >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1)"

# admin_flood.py starts geosteer itself and stops only that PID (also via PR_SET_PDEATHSIG if
# the script is killed outright), and removes its temp dir.
export GEOSTEER_BIN=$BIN REPO
exec python3 "$SCRIPT_DIR/admin_flood.py"
