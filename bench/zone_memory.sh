#!/usr/bin/env bash
# Memory and time to load big zones: generates zones of 100k and 1M records in a temporary
# directory and reports `geosteer check` wall time and peak RSS (VmHWM, via /usr/bin/time -v)
# for each. See bench/README.md.
#
#   bench/zone_memory.sh                          # builds target/release/geosteer first
#   BIN=/tmp/old/target/release/geosteer BUILD=0 bench/zone_memory.sh   # another binary
#   SIZES="100000" bench/zone_memory.sh
set -euo pipefail

SIZES=${SIZES:-100000 1000000}
BUILD=${BUILD:-1}
KEEP_TMP=${KEEP_TMP:-0}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
BIN=${BIN:-$REPO/target/release/geosteer}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for the peak RSS"
if [[ $BUILD == 1 ]]; then
    log "building release binary"
    (cd "$REPO" && cargo build --locked --release --bin geosteer >&2)
fi
[[ -x $BIN ]] || die "no binary at $BIN"
BIN=$(realpath "$BIN")

TMP=$(mktemp -d)
cleanup() { [[ $KEEP_TMP == 1 ]] || rm -rf "$TMP"; }
trap cleanup EXIT

# A zone of `n` records, ~28 bytes a line like a real host zone: mostly A, every 10th name
# also AAAA, every 50th a TXT, every 100th a CNAME to the previous name, every 1000th an MX.
gen_zone() {
    local n=$1 file=$2
    awk -v n="$n" 'BEGIN {
        print "$ORIGIN big.test."
        print "$TTL 300"
        print "@ IN SOA ns1.big.test. hostmaster.big.test. 1 7200 3600 1209600 300"
        print "@ IN NS ns1"
        print "ns1 IN A 192.0.2.53"
        c = 3; i = 0
        while (c < n) {
            i++
            if (i % 100 == 0) { printf "c%d IN CNAME h%d\n", i, i - 1; c++; continue }
            printf "h%d IN A 10.%d.%d.%d\n", i, int(i / 65536) % 256, int(i / 256) % 256, i % 256; c++
            if (i % 10 == 0 && c < n) { printf "h%d IN AAAA 2001:db8::%x\n", i, i % 65536; c++ }
            if (i % 50 == 0 && c < n) { printf "h%d IN TXT \"v=spf1 -all %d\"\n", i, i; c++ }
            if (i % 1000 == 0 && c < n) { printf "m%d IN MX 10 h%d\n", i, i; c++ }
        }
    }' > "$file"
}

printf '| records | zone file | check wall time | peak RSS (VmHWM) | bytes/record |\n'
printf '| ---: | ---: | ---: | ---: | ---: |\n'
for n in $SIZES; do
    dir=$TMP/$n
    mkdir -p "$dir/zones"
    gen_zone "$n" "$dir/zones/big.test.zone"
    cat > "$dir/geosteer.toml" <<EOF
[zones]
directory = "zones"
EOF
    size=$(stat -c %s "$dir/zones/big.test.zone")
    (cd "$dir" && /usr/bin/time -v "$BIN" check --config geosteer.toml) \
        > "$dir/out" 2> "$dir/time" || { cat "$dir/out" "$dir/time" >&2; die "check failed for $n"; }
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/time")
    printf '| %s | %s MB | %s | %s MiB | %s |\n' "$n" "$((size / 1000000))" "$wall" \
        "$((rss_kb / 1024))" "$((rss_kb * 1024 / n))"
done
