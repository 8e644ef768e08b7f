#!/usr/bin/env bash
# Fleet failover benchmark ("Fleet II: quorum health"): three geosteer instances with
# [cluster] on a real 3-member etcd decide endpoint health by a majority of their probe votes.
# It measures how long after a region fails (connections refused, or black-holed: SYNs
# dropped) the LAST instance answers the next region for a London client, how long after it
# recovers the last one answers it again, and in how many poll rounds the instances disagree
# meanwhile.
#
# Loopback only (127.0.0.0/8). The work is done by bench/fleet_failover_run.py (Python 3,
# standard library only; it reuses helpers of bench/failover.py and bench/fleet_run.py); this
# wrapper checks the prerequisites. See bench/README.md for what is measured and how.
#
#   bench/fleet_failover.sh                     # build, then 8 trials of each case (~2-3 min after the build)
#   GEOSTEER_BIN=/path/to/geosteer bench/fleet_failover.sh   # that binary, no build
#   TRIALS=12 BUILD=0 bench/fleet_failover.sh
#   bench/fleet_failover.sh > fleet-failover.md # tables to stdout, progress to stderr
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

TRIALS=${TRIALS:-8}                 # trials per case; each measures a failover and a fail-back
CASES=${CASES:-refused blackhole}   # which failures, run in turn within each trial
POLL_MS=${POLL_MS:-10}              # ms between the starts of two poll rounds while measuring
ROUND_MS=${ROUND_MS:-100}           # grid of the disagreement count (a client polling that often)
OUT=${OUT:-/tmp/fleet-failover.json}  # JSON summary (not committed)
KEEP_TMP=${KEEP_TMP:-0}             # 1: keep the temp dir (configs, geosteer and etcd logs)
SEED=${SEED:-}                      # optional: seed for the random phases
if [[ -n ${GEOSTEER_BIN:-} ]]; then
    BIN=$GEOSTEER_BIN
    BUILD=${BUILD:-0}               # a given binary is used as it is
else
    BIN=$REPO/target/release/geosteer
    BUILD=${BUILD:-1}               # 0: use the existing target/release/geosteer
fi
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[fleet-failover] %s\n' "$*" >&2; }
die() { printf '[fleet-failover] error: %s\n' "$*" >&2; exit 1; }

[[ $TRIALS =~ ^[1-9][0-9]*$ ]] || die "TRIALS must be a positive integer (got '$TRIALS')"
(( TRIALS >= 8 )) || log "warning: TRIALS=$TRIALS; use at least 8 for min/median/max to mean much"
for c in $CASES; do [[ $c == refused || $c == blackhole ]] || die "CASES: 'refused' and/or 'blackhole' (got '$c')"; done
[[ -n ${CASES// /} ]] || die "CASES is empty"
[[ $POLL_MS =~ ^[1-9][0-9]*$ ]] || die "POLL_MS must be a positive integer"
[[ $ROUND_MS =~ ^[1-9][0-9]*$ ]] || die "ROUND_MS must be a positive integer"
(( ROUND_MS >= POLL_MS )) || die "ROUND_MS ($ROUND_MS) must be at least POLL_MS ($POLL_MS)"
[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
[[ $(uname -s) == Linux ]] || die "Linux only: the black-holed case relies on Linux dropping SYNs to a full accept queue"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"
if ! command -v etcd >/dev/null; then
    log "installing etcd-server"
    SUDO=()
    if (( EUID != 0 )); then
        command -v sudo >/dev/null || die "need root (or sudo) to install etcd-server"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq etcd-server >&2
fi

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1, or set GEOSTEER_BIN)"
log "binary $BIN ($(date -u -r "$BIN" '+%F %T UTC'))"

# fleet_failover_run.py starts etcd and geosteer itself, stops only the PIDs it started on exit
# (also on Ctrl-C / SIGTERM, and via PR_SET_PDEATHSIG if it is killed outright) and removes
# its temp dir.
export GEOSTEER_BIN=$BIN REPO TRIALS CASES POLL_MS ROUND_MS OUT KEEP_TMP SEED
exec python3 "$SCRIPT_DIR/fleet_failover_run.py"
