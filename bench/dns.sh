#!/usr/bin/env bash
# Benchmark geosteer against Knot DNS on static answers, over UDP on loopback.
#
# Each server is pinned to CPU 0 and dnsperf to CPU 1; the servers run one at
# a time. See bench/README.md for the columns and the knobs.
#
#   bench/dns.sh                      # both servers, 15 s each
#   SERVERS=knot DURATION=5 bench/dns.sh
#   QUERIES=/tmp/ecs.bin bench/dns.sh # extra run with a query file of your own
set -euo pipefail

DURATION=${DURATION:-15}          # seconds of load per run
SERVERS=${SERVERS:-geosteer knot}
QPS_LIMIT=${QPS_LIMIT:-}          # empty: no -Q, dnsperf sends as fast as it can
CLIENTS=${CLIENTS:-4}             # dnsperf -c
OUTSTANDING=${OUTSTANDING:-100}   # dnsperf -q (more than ~200 loses packets here)
PERCENTILES=${PERCENTILES:-1}     # 1: run dnsperf -v to compute p99; 0: skip
QUERIES=${QUERIES:-}              # optional second query file
QUERIES_FORMAT=${QUERIES_FORMAT:-} # text | binary (default: binary if *.bin)
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
BUILD=${BUILD:-1}                 # 0: use the existing target/release/geosteer

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
ZONES_DIR=${ZONES_DIR:-$REPO/zones}
ZONE=example.test
ZONE_FILE=$ZONES_DIR/$ZONE.zone
PROBE=www.$ZONE
START_DEADLINE=30                 # seconds a server gets to start answering
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- arguments
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (got '$DURATION')"
[[ -z $QPS_LIMIT || $QPS_LIMIT =~ ^[1-9][0-9]*$ ]] || die "QPS_LIMIT must be a positive integer"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer"
[[ $OUTSTANDING =~ ^[1-9][0-9]*$ ]] || die "OUTSTANDING must be a positive integer"
for s in $SERVERS; do
    case $s in geosteer|knot) ;; *) die "unknown server '$s' in SERVERS (use geosteer and/or knot)";; esac
done
[[ -n ${SERVERS// /} ]] || die "SERVERS is empty"
if [[ -n $QUERIES ]]; then
    [[ -r $QUERIES ]] || die "QUERIES=$QUERIES is not a readable file"
    QUERIES=$(cd "$(dirname "$QUERIES")" && pwd)/$(basename "$QUERIES")
    if [[ -z $QUERIES_FORMAT ]]; then
        if [[ $QUERIES == *.bin ]]; then QUERIES_FORMAT=binary; else QUERIES_FORMAT=text; fi
    fi
    case $QUERIES_FORMAT in text|binary) ;; *) die "QUERIES_FORMAT must be text or binary";; esac
fi
[[ -r $ZONE_FILE ]] || die "zone file $ZONE_FILE not found"
(( $(nproc) >= 2 )) || log "warning: fewer than 2 CPUs: server and dnsperf will share a core"

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v dnsperf >/dev/null || need_pkgs+=(dnsperf)
command -v knotd >/dev/null || need_pkgs+=(knot)
command -v dig >/dev/null || need_pkgs+=(bind9-dnsutils)
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
# The knot package enables a system knot.service on install; it listens on
# port 53 and does not touch our ports, so it is left alone.

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/geosteer-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # bounded wait: SIGKILL after ~10 s (geosteer has a 5 s shutdown grace)
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# ---------------------------------------------------------------- free ports
# Prints N loopback ports, each free for both UDP and TCP at the time of the
# check (the sockets are held until all N are found so they differ).
free_ports() {
    local n=$1
    if command -v python3 >/dev/null; then
        python3 - "$n" <<'EOF'
import socket, sys
n, held, ports = int(sys.argv[1]), [], []
for _ in range(200):
    if len(ports) == n:
        break
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); u.close(); continue
    held += [t, u]; ports.append(port)
if len(ports) < n:
    sys.exit("no free port found")
print(" ".join(map(str, ports)))
EOF
    else
        local used picked=() p
        for _ in $(seq 200); do
            (( ${#picked[@]} == n )) && break
            p=$(( 20000 + RANDOM % 40000 ))
            used=$(ss -Hlntu "sport = :$p" | wc -l)
            [[ $used == 0 && " ${picked[*]} " != *" $p "* ]] && picked+=("$p")
        done
        (( ${#picked[@]} == n )) || die "no free port found"
        echo "${picked[*]}"
    fi
}

# ---------------------------------------------------------------- /proc sampling
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {   # utime + stime of the whole process (all threads), in ticks
    local stat rest
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) }               # fields after "(comm) ", comm may hold spaces
    # shellcheck disable=SC2086
    set -- $rest                    # $1 = state (field 3) ... $12 utime, $13 stime
    echo $(( ${12} + ${13} ))
}
rss_kib() {
    awk '/^VmRSS:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}
now_ns() { date +%s%N; }
sys_ticks() {   # all CPUs: "busy steal total" ticks; busy = user + nice + system
    # steal: time the hypervisor ran something else while we wanted the CPU
    awk '/^cpu / { print $2 + $3 + $4, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

# ---------------------------------------------------------------- servers
wait_answering() {   # name pid port logfile
    local name=$1 pid=$2 port=$3 logf=$4 deadline ans
    deadline=$(( $(date +%s) + START_DEADLINE ))
    while (( $(date +%s) < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            sed 's/^/    /' "$logf" >&2 || true
            die "$name exited before answering (log above)"
        fi
        ans=$(dig @127.0.0.1 -p "$port" "$PROBE" A +short +time=1 +tries=1 2>/dev/null || true)
        if [[ -n $ans && $ans != *";;"* ]]; then
            log "$name answers on 127.0.0.1:$port ($PROBE A -> $(echo "$ans" | tr '\n' ' '))"
            return 0
        fi
        sleep 0.2
    done
    sed 's/^/    /' "$logf" >&2 || true
    die "$name did not answer $PROBE within ${START_DEADLINE}s (log above)"
}

show_answers() {   # name port: what the server says for each query kind, for the log
    local port=$2 q
    for q in "$ZONE SOA" "$ZONE NS" "$PROBE A" "$PROBE AAAA" "nonexistent-bench.$ZONE A"; do
        # shellcheck disable=SC2086
        dig @127.0.0.1 -p "$port" $q +time=1 +tries=1 +noall +comments 2>/dev/null \
            | awk -v q="$q" -v s="$1" '/->>HEADER<<-/ { sub(/,$/, "", $6); printf "[bench]   %-8s %-28s %s\n", s, q, $6 }' >&2 || true
    done
}

SERVER_PID=
start_geosteer() {   # port
    local port=$1 bin=$REPO/target/release/geosteer
    [[ -x $bin ]] || die "$bin not built"
    cat >"$TMP/geosteer.toml" <<EOF
[server]
udp = ["127.0.0.1:$port"]
tcp = ["127.0.0.1:$port"]
workers = 1

[zones]
directory = "$ZONES_DIR"

[log]
level = "warn"
EOF
    taskset -c "$SERVER_CPU" "$bin" serve --config "$TMP/geosteer.toml" \
        >"$TMP/geosteer.log" 2>&1 </dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_answering geosteer "$SERVER_PID" "$port" "$TMP/geosteer.log"
}

start_knot() {   # port
    local port=$1
    mkdir -p "$TMP/knot/run" "$TMP/knot/storage"
    cat >"$TMP/knot.conf" <<EOF
server:
    rundir: "$TMP/knot/run"
    listen: 127.0.0.1@$port
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

control:
    listen: "$TMP/knot/run/knot.sock"

database:
    storage: "$TMP/knot/storage"

log:
  - target: stderr
    any: warning

template:
  - id: default
    storage: "$TMP/knot/storage"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none

zone:
  - domain: $ZONE
    file: "$ZONE_FILE"
EOF
    knotc -c "$TMP/knot.conf" conf-check >/dev/null 2>"$TMP/knot-check.log" \
        || { cat "$TMP/knot-check.log" >&2; die "knot.conf rejected by knotc conf-check"; }
    taskset -c "$SERVER_CPU" knotd -c "$TMP/knot.conf" >"$TMP/knot.log" 2>&1 </dev/null &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_answering knot "$SERVER_PID" "$port" "$TMP/knot.log"
}

# ---------------------------------------------------------------- queries
# 1000 lines: per block of five, www A, www AAAA, apex SOA, apex NS and a
# distinct nonexistent name (NXDOMAIN).
STATIC_QUERIES=$TMP/static.txt
for i in $(seq 200); do
    printf '%s A\n%s AAAA\n%s SOA\n%s NS\nnx%d.%s A\n' "$PROBE" "$PROBE" "$ZONE" "$ZONE" "$i" "$ZONE"
done >"$STATIC_QUERIES"

# ---------------------------------------------------------------- one run
NOTES=()     # interference warnings, repeated under the table
RESULTS=()   # "server|workload|qps|avg_ms|p99_ms|lost|cpu_pct|rss_mib|kqps_core"

run_load() {   # server port workload file format
    local server=$1 port=$2 workload=$3 file=$4 format=$5 pid=$SERVER_PID
    local out=$TMP/dnsperf-$server-$workload.out err=$TMP/dnsperf-$server-$workload.err
    local args=(-s 127.0.0.1 -p "$port" -d "$file" -l "$DURATION" -c "$CLIENTS" -T 1 -q "$OUTSTANDING" -t 2)
    [[ -n $QPS_LIMIT ]] && args+=(-Q "$QPS_LIMIT")
    [[ $format == binary ]] && args+=(-B)
    [[ $PERCENTILES == 1 ]] && args+=(-v)

    log "$server/$workload: dnsperf ${args[*]} (${DURATION}s)"
    local t0 c0 t1 c1 s0 s1 rss max_rss=0 dp deadline dp_ticks=0 tk
    c0=$(cpu_ticks "$pid"); s0=$(sys_ticks); t0=$(now_ns)
    taskset -c "$CLIENT_CPU" dnsperf "${args[@]}" >"$out" 2>"$err" </dev/null &
    dp=$!
    PIDS+=("$dp")
    deadline=$(( $(date +%s) + DURATION + 30 ))
    while kill -0 "$dp" 2>/dev/null; do
        rss=$(rss_kib "$pid")
        (( rss > max_rss )) && max_rss=$rss
        tk=$(cpu_ticks "$dp" 2>/dev/null) && dp_ticks=$tk
        if (( $(date +%s) > deadline )); then
            log "dnsperf overran its time limit; stopping it"
            kill "$dp" 2>/dev/null || true
            break
        fi
        sleep 0.25
    done
    local dp_rc=0
    wait "$dp" || dp_rc=$?
    forget_pid "$dp"
    t1=$(now_ns); c1=$(cpu_ticks "$pid"); s1=$(sys_ticks)
    rss=$(rss_kib "$pid"); (( rss > max_rss )) && max_rss=$rss
    kill -0 "$pid" 2>/dev/null || { sed 's/^/    /' "$TMP/$server.log" >&2; die "$server died during the run"; }
    if (( dp_rc != 0 )); then
        sed 's/^/    /' "$err" >&2
        die "dnsperf failed (exit $dp_rc)"
    fi

    # dnsperf's summary: the lines of stdout that are not per-query ("> ...").
    local qps avg lost codes p99
    qps=$(awk '/Queries per second:/ { print $4 }' "$out")
    avg=$(awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000 }' "$out")
    lost=$(awk '/Queries lost:/ { print $3 }' "$out")
    codes=$(grep -m1 'Response codes:' "$out" | sed 's/^ *Response codes: *//')
    [[ -n $qps && -n $avg && -n $lost ]] || { cat "$out" "$err" >&2; die "could not parse dnsperf output"; }
    log "$server/$workload: response codes: $codes"
    if grep -Eq 'SERVFAIL|REFUSED|FORMERR|NOTIMP' <<<"$codes"; then
        log "warning: $server returned error rcodes; its figures are not comparable"
    fi

    # p99 over the answered queries, from the per-query latencies of -v
    # ("> RCODE name type seconds"; timeouts print "T" and are counted in lost).
    # Latencies go into 1 us buckets, so no sort of millions of lines is needed.
    p99=-
    if [[ $PERCENTILES == 1 ]]; then
        p99=$(awk '
            /^> / && $2 != "T" && $NF ~ /^[0-9.]+$/ {
                us = int($NF * 1e6 + 0.5); h[us]++; n++; if (us > max) max = us
            }
            END {
                if (n == 0) { print "-"; exit }
                want = n * 0.99; c = 0
                for (us = 0; us <= max; us++) if (us in h) { c += h[us]; if (c >= want) break }
                printf "%.3f", us / 1000
            }' "$out")
    fi

    local elapsed cpu_pct rss_mib kqps
    elapsed=$(( t1 - t0 ))
    cpu_pct=$(awk -v d=$(( c1 - c0 )) -v hz="$CLK_TCK" -v ns="$elapsed" 'BEGIN { printf "%.1f", d / hz / (ns / 1e9) * 100 }')
    rss_mib=$(awk -v k="$max_rss" 'BEGIN { printf "%.1f", k / 1024 }')
    kqps=$(awk -v q="$qps" -v c="$cpu_pct" 'BEGIN { if (c > 0) printf "%.1f", q / (c / 100) / 1000; else print "-" }')
    qps=$(awk -v q="$qps" 'BEGIN { printf "%.0f", q }')
    # Interference. "other": CPU time used by anything but the server and
    # dnsperf, in % of one CPU (dnsperf's last 0.25 s is not seen, hence the
    # slack). "steal": % of the machine's CPU time the hypervisor gave to
    # someone else. Either one skews every column.
    local other steal
    read -r other steal < <(awk -v a="$s0" -v b="$s1" -v srv=$(( c1 - c0 )) -v dp="$dp_ticks" \
        -v hz="$CLK_TCK" -v ns="$elapsed" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            o = (y[1] - x[1] - srv - dp) / hz / (ns / 1e9) * 100
            st = (y[3] > x[3]) ? (y[2] - x[2]) / (y[3] - x[3]) * 100 : 0
            printf "%.0f %.0f\n", o < 0 ? 0 : o, st }')
    log "$server/$workload: other processes ~${other}% of a CPU, hypervisor steal ${steal}% during the run"
    if (( other > 15 || steal > 5 )); then
        NOTES+=("$server/$workload: other processes used ~${other}% of a CPU and the hypervisor stole ${steal}% of CPU time during the run: figures are skewed, rerun on a quiet machine")
        log "warning: ${NOTES[-1]}"
    fi
    RESULTS+=("$server|$workload|$qps|$avg|$p99|$lost|$cpu_pct|$rss_mib|$kqps")
    log "$server/$workload: $qps qps, avg $avg ms, p99 $p99 ms, lost $lost, cpu $cpu_pct %, rss $rss_mib MiB"
    # the -v output of a 15 s run is ~100 MB; drop it once parsed
    [[ $KEEP_TMP == 1 ]] || rm -f "$out"
}

# ---------------------------------------------------------------- main
busy_warning() {   # other work on the machine skews every column
    # share of all CPUs busy over one idle second (no server, no dnsperf running)
    local a b busy
    # (steal counts as busy: the hypervisor is running someone else)
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat)
    busy=$(awk -v a="$a" -v b="$b" 'BEGIN {
        split(a, x, " "); split(b, y, " "); u = y[1] - x[1]; i = y[2] - x[2]
        printf "%.0f", (u + i > 0) ? 100 * u / (u + i) : 0 }')
    if (( busy > 10 )); then
        log "warning: the machine is ${busy}% busy before the run: something else is running; figures will be noisy"
    fi
}

if [[ " $SERVERS " == *" geosteer "* && $BUILD != 0 ]]; then
    command -v cargo >/dev/null || die "cargo not found (install Rust, or BUILD=0 with a built target/release/geosteer)"
    log "cargo build --release in $REPO"
    (cd "$REPO" && cargo build --release >&2)
fi

for server in $SERVERS; do
    # a fresh port per server, so a slow-to-die previous server cannot collide
    port=$(free_ports 1)
    [[ $port =~ ^[0-9]+$ ]] || die "could not pick a free port (got '$port')"
    busy_warning
    log "starting $server on 127.0.0.1:$port (CPU $SERVER_CPU)"
    "start_$server" "$port"
    show_answers "$server" "$port"
    run_load "$server" "$port" static "$STATIC_QUERIES" text
    if [[ -n $QUERIES ]]; then
        run_load "$server" "$port" "$(basename "$QUERIES")" "$QUERIES" "$QUERIES_FORMAT"
    fi
    stop_pid "$SERVER_PID"
    SERVER_PID=
done

# ---------------------------------------------------------------- report
HEADERS="server|queries|QPS|avg ms|p99 ms|lost|server CPU %|RSS MiB|kQPS/core"
echo
{
    echo "$HEADERS"
    printf '%s\n' "${RESULTS[@]}"
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } ; nf = NF; nr = NR }
    END {
        for (r = 1; r <= nr; r++) {
            line = ""
            for (i = 1; i <= nf; i++) {
                fmt = (i <= 2) ? "%-" w[i] "s" : "%" w[i] "s"
                line = line (i > 1 ? "  " : "") sprintf(fmt, cell[r, i])
            }
            print line
        }
    }'
echo
echo "dnsperf: -c $CLIENTS -T 1 -q $OUTSTANDING${QPS_LIMIT:+ -Q $QPS_LIMIT}, ${DURATION}s per run, UDP; server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU; $(nproc) CPUs, $(uname -r)"
for n in "${NOTES[@]}"; do echo "warning: $n"; done
echo
echo "| ${HEADERS//|/ | } |"
echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
for row in "${RESULTS[@]}"; do
    echo "| ${row//|/ | } |"
done
