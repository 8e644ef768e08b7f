#!/usr/bin/env bash
# Failover benchmark: how long geosteer, at its DEFAULT monitor settings, takes to change a
# client's answer when an endpoint starts refusing connections, when it starts silently
# dropping them, and to bring the answer back once the endpoint is restored.
#
# Loopback only (127.0.0.0/8). The work is done by bench/failover.py (Python 3, standard
# library only); this wrapper builds geosteer and checks the prerequisites. See
# bench/README.md for what is measured and how.
#
#   bench/failover.sh                 # build, then 8 trials of each case (~2-3 min)
#   TRIALS=12 BUILD=0 bench/failover.sh
#   bench/failover.sh > failover.md   # tables to stdout, progress to stderr
set -euo pipefail

TRIALS=${TRIALS:-8}       # trials per case (refused, silent drop); each also measures fail-back
BUILD=${BUILD:-1}         # 0: use the existing target/release/geosteer
KEEP_TMP=${KEEP_TMP:-0}   # 1: keep the temp dir (configs, geosteer.log)
SEED=${SEED:-}            # optional: seed for the random phases, to repeat a run's schedule

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$REPO/target/release/geosteer
export PATH="$PATH:$HOME/.cargo/bin"

log() { printf '[failover] %s\n' "$*" >&2; }
die() { printf '[failover] error: %s\n' "$*" >&2; exit 1; }

[[ $TRIALS =~ ^[1-9][0-9]*$ ]] || die "TRIALS must be a positive integer (got '$TRIALS')"
(( TRIALS >= 8 )) || log "warning: TRIALS=$TRIALS; use at least 8 for min/median/max to mean much"
[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || die "SEED must be a non-negative integer"
[[ $(uname -s) == Linux ]] || die "Linux only: the silent-drop case relies on Linux dropping SYNs to a full accept queue"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1)"

# failover.py starts geosteer itself, kills only that PID on exit (also on Ctrl-C / SIGTERM,
# and via PR_SET_PDEATHSIG if the script is killed outright) and removes its temp dir.
export GEOSTEER_BIN=$BIN REPO TRIALS KEEP_TMP SEED
exec python3 "$SCRIPT_DIR/failover.py"
