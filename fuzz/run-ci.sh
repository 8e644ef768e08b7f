#!/usr/bin/env bash
# Bounded fuzzing for CI: builds every fuzz target and runs each for a fixed, short time from the
# committed seeds in fuzz/corpus/<target>. Fails on any crash, panic, failed invariant, timeout
# (an input taking more than 10 s) or out-of-memory; libFuzzer then leaves the input in
# fuzz/artifacts/<target>/ and prints it, and this script prints how to reproduce it.
#
#   bash fuzz/run-ci.sh                          # every target, 20 s each
#   FUZZ_SECONDS=300 bash fuzz/run-ci.sh dns_request zone_file
#
# New inputs libFuzzer finds go to fuzz/work/<target>/ (git-ignored), never into the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-20}"
all=(dns_request ecs_option zone_file config_toml profiles_toml)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sanitizer-coverage options). The
# machines have one stable toolchain and no other can be fetched; RUSTC_BOOTSTRAP=1 makes stable
# rustc and cargo accept those flags. (With a nightly installed, FUZZ_TOOLCHAIN=+nightly works.)
export RUSTC_BOOTSTRAP=1
tc=()
[ -n "${FUZZ_TOOLCHAIN:-}" ] && tc=("$FUZZ_TOOLCHAIN")

# Fuzz exactly the dependency versions geosteer is tested with: the fuzz crate's lock file is
# the repository's Cargo.lock plus the fuzzing crates (libfuzzer-sys), resolved afresh each run.
cp Cargo.lock fuzz/Cargo.lock

# Release optimisations with debug assertions and overflow checks, AddressSanitizer (defaults).
cargo "${tc[@]}" fuzz build

dict_for() {
  case "$1" in
    config_toml | profiles_toml) echo "-dict=fuzz/dict/toml.dict" ;;
    zone_file) echo "-dict=fuzz/dict/zone.dict" ;;
  esac
}

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  echo "fuzz: $t for ${secs}s"
  rc=0
  # shellcheck disable=SC2046 # the dictionary flag is one word or none
  cargo "${tc[@]}" fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 $(dict_for "$t") >"fuzz/work/$t.log" 2>&1 || rc=$?
  # The start and end lines (coverage, corpus, exec/s), and any crash report.
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)|panicked|^==[0-9]+==|^SUMMARY|^artifact_prefix|Test unit written' \
    "fuzz/work/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED; log fuzz/work/$t.log; reproduce with:"
    for a in fuzz/artifacts/"$t"/*; do
      [ -e "$a" ] && echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run $t $a"
    done
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
