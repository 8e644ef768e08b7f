#!/usr/bin/env bash
# Response rate limiting under a spoofed flood with random ECS subnets and random subdomains:
# answered share and amplification (bytes out / bytes in), for one binary or two (before and
# after). See bench/README.md.
#
#   bench/rrl.sh                                   # target/release/geosteer (built first)
#   BASE_BIN=/tmp/old/target/release/geosteer bench/rrl.sh   # also the binary before
#   COUNT=15000 QPS=5000 WORKLOADS="big-ecs nxdomain mqtt-ecs" bench/rrl.sh
set -euo pipefail

COUNT=${COUNT:-15000}
QPS=${QPS:-5000}
RATE=${RATE:-100}
WORKLOADS=${WORKLOADS:-big-ecs nxdomain mqtt-ecs}
BUILD=${BUILD:-1}
BASE_BIN=${BASE_BIN:-}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=${BIN:-$REPO/target/release/geosteer}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

if [[ $BUILD == 1 ]]; then
    log "building release binary"
    (cd "$REPO" && cargo build --locked --release --bin geosteer >&2)
fi
TMP=$(mktemp -d)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
    local label=$1 bin=$2 port
    port=$(free_port)
    cat > "$TMP/geosteer.toml" <<CONF
[server]
udp = ["127.0.0.1:$port"]
tcp = ["127.0.0.1:$port"]
workers = 1
[zones]
directory = "$REPO/zones"
[geoip]
city = "$REPO/geo/sample-city.mmdb"
asn = "$REPO/geo/sample-asn.mmdb"
[admin]
state_file = "$TMP/state.json"
[rrl]
responses_per_second = $RATE
slip = 2
exempt = ["127.0.0.1/32"]
CONF
    "$bin" serve --config "$TMP/geosteer.toml" 2> "$TMP/log" &
    PID=$!
    for _ in $(seq 100); do
        dig +short +time=1 +tries=1 @127.0.0.1 -p "$port" www.example.test >/dev/null 2>&1 && break
        sleep 0.1
    done
    log "$label: $bin on port $port"
    for w in $WORKLOADS; do
        printf '| %s ' "$label"
        python3 "$SCRIPT_DIR/rrl_flood.py" --server "127.0.0.1:$port" --workload "$w" \
            --count "$COUNT" --qps "$QPS"
        sleep 1.1   # a fresh one-second window for the next workload
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
}

printf '| binary | workload | queries | answered in full | truncated | nothing | bytes in | bytes out | amplification |\n'
printf '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
[[ -n $BASE_BIN ]] && run before "$(realpath "$BASE_BIN")"
run after "$(realpath "$BIN")"
