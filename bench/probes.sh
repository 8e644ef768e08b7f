#!/usr/bin/env bash
# Probing at scale: geosteer monitoring 10,000 TCP endpoints (100 profiles x 100 endpoints, each
# a distinct loopback address 127.X.Y.Z) at a 10 s interval on this machine, with geosteer's CPU,
# RSS and probe rate sampled every 5 s, and SIGHUP reloads during the run to show that a reload
# neither starts a probe storm nor loses endpoint state.
#
# Loopback only (127.0.0.0/8). The work is done by bench/probes_run.py (Python 3, standard
# library only); this wrapper builds geosteer and checks the prerequisites. See bench/README.md.
#
#   bench/probes.sh                        # build, then start-up + 20 s + 120 s of steady state
#   BUILD=0 DURATION=300 bench/probes.sh   # longer, with the existing target/release/geosteer
#   JITTER=5s bench/probes.sh              # set [profile.monitor] jitter (default: geosteer's)
#   PROTOCOL=http bench/probes.sh          # HTTP GET probes instead of TCP connects
#   bench/probes.sh > probes.md            # the tables go to stdout, progress to stderr
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=$REPO/target/release/geosteer
export PATH="$PATH:$HOME/.cargo/bin"

BUILD=${BUILD:-1}
KEEP_TMP=${KEEP_TMP:-0}
export PROFILES=${PROFILES:-100}         # profiles
export ENDPOINTS=${ENDPOINTS:-100}       # endpoints per profile
export LISTEN_EVERY=${LISTEN_EVERY:-10}  # one endpoint in N has a listener (the rest refuse)
export INTERVAL=${INTERVAL:-10s}         # [profile.monitor] interval
export JITTER=${JITTER:-}                # [profile.monitor] jitter; empty = not set (default 100ms)
export DURATION=${DURATION:-120}         # seconds of steady state sampled
export SAMPLE=${SAMPLE:-5}               # seconds between samples
export WARMUP=${WARMUP:-20}              # seconds of settling between /readyz 200 and steady state
export READY_TIMEOUT=${READY_TIMEOUT:-600}  # longest start-up phase (s) before measuring anyway
export RELOADS=${RELOADS:-4}             # SIGHUPs spread over the steady state
export RELOAD_WAIT=${RELOAD_WAIT:-30}    # seconds to wait for a reload to finish
export STARTUP_RELOAD=${STARTUP_RELOAD:-30}  # one SIGHUP at +N s if still starting up (0 = none)
export WORKERS=${WORKERS:-2}             # [server] workers
export PROTOCOL=${PROTOCOL:-tcp}        # tcp, or http (the listeners answer 200 to a GET)

log() { printf '[probes] %s\n' "$*" >&2; }
die() { printf '[probes] error: %s\n' "$*" >&2; exit 2; }

[[ $BUILD == 0 || $BUILD == 1 ]] || die "BUILD must be 0 or 1"
[[ $KEEP_TMP == 0 || $KEEP_TMP == 1 ]] || die "KEEP_TMP must be 0 or 1"
[[ $(uname -s) == Linux ]] || die "Linux only (all of 127.0.0.0/8 must be local, and /proc)"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 >= 3.8 needed"
[[ -r $REPO/geo/sample-city.mmdb ]] || die "$REPO/geo/sample-city.mmdb not found"

if [[ $BUILD == 1 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN not found (run with BUILD=1)"

# probes_run.py starts geosteer itself, stops only that PID on exit (also on Ctrl-C / SIGTERM,
# and via PR_SET_PDEATHSIG if the script is killed outright) and removes its temp dir.
export GEOSTEER_BIN=$BIN REPO KEEP_TMP
exec python3 "$SCRIPT_DIR/probes_run.py"
