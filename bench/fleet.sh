#!/usr/bin/env bash
# Fleet benchmark: geosteer instances sharing forced states and drills through etcd.
#
# For N = 3 and N = 9 instances on a real 3-member etcd cluster (all on loopback) it measures
# how long a drill started on one instance takes to move every instance's answers and, after
# its expiry, to bring them back (seen from outside with DNS queries, and by the instances'
# own rows); the etcd traffic of each instance at rest and over a drill; and DNS throughput
# of one instance with [cluster] off and on (dnsperf). The work is done by
# bench/fleet_run.py (Python 3, standard library only); this wrapper builds geosteer and
# checks the prerequisites. See bench/README.md for what is measured and how.
#
#   bench/fleet.sh                      # build, then 8 trials per fleet size (~6-8 min)
#   TRIALS=12 BUILD=0 bench/fleet.sh
#   SIZES=3 REST=5 DURATION=3 TRIALS=2 BUILD=0 bench/fleet.sh   # a quick look
#   bench/fleet.sh > fleet.md           # tables to stdout, progress to stderr
set -euo pipefail

TRIALS=${TRIALS:-8}          # drill trials per fleet size
SIZES=${SIZES:-3 9}          # fleet sizes (instances); throughput runs with the first one
DRILL=${DRILL:-4s}           # drill duration (geosteer duration syntax)
REST=${REST:-20}             # seconds of each at-rest etcd traffic window
DURATION=${DURATION:-10}     # seconds of dnsperf per throughput run (0: skip throughput)
ROUNDS=${ROUNDS:-1}          # throughput runs per mode (standalone, cluster, alternating)
POLL_MS=${POLL_MS:-1}        # ms between the starts of two DNS poll rounds while measuring
SERVER_CPU=${SERVER_CPU:-0}  # CPU of the instance under dnsperf load
CLIENT_CPU=${CLIENT_CPU:-1}  # CPU of dnsperf
BUILD=${BUILD:-1}            # 0: use the existing target/release/geosteer
KEEP_TMP=${KEEP_TMP:-0}      # 1: keep the temp dir (configs, geosteer and etcd logs)
SEED=${SEED:-}               # optional: seed for the random phases

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$REPO/target/release/geosteer
OUT=${OUT:-$REPO/bench/fleet-results.json}   # JSON summary (not committed)
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[fleet] %s\n' "$*" >&2; }
die() { printf '[fleet] error: %s\n' "$*" >&2; exit 1; }

[[ $TRIALS =~ ^[1-9][0-9]*$ ]] || die "TRIALS must be a positive integer (got '$TRIALS')"
(( TRIALS >= 8 )) || log "warning: TRIALS=$TRIALS; use at least 8 for min/median/max to mean much"
for n in $SIZES; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers (got '$SIZES')"; done
[[ -n ${SIZES// /} ]] || die "SIZES is empty"
[[ $DRILL =~ ^[1-9][0-9]*s$ ]] || die "DRILL must be whole seconds like 4s (got '$DRILL')"
[[ $REST =~ ^[1-9][0-9]*$ ]] || die "REST must be a positive integer"
[[ $DURATION =~ ^[0-9]+$ ]] || die "DURATION must be a non-negative integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $POLL_MS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "POLL_MS must be a number"
[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
[[ $(uname -s) == Linux ]] || die "Linux only (/proc, taskset, PR_SET_PDEATHSIG)"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs: dnsperf and the server will share a core"

need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
if (( DURATION > 0 )); then command -v dnsperf >/dev/null || need_pkgs+=(dnsperf); fi
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if (( ${#need_pkgs[@]} )); then
    log "installing ${need_pkgs[*]}"
    SUDO=()
    if (( EUID != 0 )); then
        command -v sudo >/dev/null || die "need root (or sudo) to install ${need_pkgs[*]}"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1)"

# fleet_run.py starts etcd, geosteer and dnsperf itself, stops only the PIDs it started on exit
# (also on Ctrl-C / SIGTERM, and via PR_SET_PDEATHSIG if it is killed outright) and removes
# its temp dir.
export GEOSTEER_BIN=$BIN REPO TRIALS SIZES DRILL REST DURATION ROUNDS POLL_MS SERVER_CPU \
    CLIENT_CPU KEEP_TMP SEED OUT
exec python3 "$SCRIPT_DIR/fleet_run.py"
