#!/usr/bin/env bash
# make-certs.sh — the PKI of geosteer's etcd cluster, and the Kubernetes Secrets that carry it.
#
#   deploy/etcd/make-certs.sh [-o DIR] [--domain D] [--namespace NS] [--days N]
#                             [--trust OLD-CA.crt]... [REGION...]
#
# Regions default to: westeurope eastus southeastasia (one etcd member each).
#
# In DIR (default ~/geosteer-etcd-pki — outside the repository: it holds private keys —
# created with mode 700):
#   ca.crt, ca.key          the CA; created on the first run, reused afterwards. Keep ca.key
#                           offline (e.g. Azure Key Vault): whoever has it can join the cluster.
#   ca-bundle.crt           what every party trusts: ca.crt plus any --trust file (CA rotation)
#   member-<region>.crt/key server and peer certificate of etcd-<region> (CN etcd-peer: the
#                           members accept peers with that CN only)
#   geosteer.crt/key        client certificate of geosteer (CN geosteer = its etcd RBAC user)
#   admin.crt/key           client certificate of the etcd root user (CN root): etcdctl, backups
#   secrets-<region>.yaml   the Secrets for that region's cluster (namespace NS):
#                             etcd-member-tls       ca.crt tls.crt tls.key  (the member)
#                             etcd-admin-tls        ca.crt tls.crt tls.key  (etcdctl in the pod)
#                             geosteer-etcd-client  ca.crt tls.crt tls.key  (geosteer [cluster])
#
# Every run re-issues all leaf certificates (that is how they are rotated); the CA stays.
# Apply with:  kubectl --context aks-<region> apply -f DIR/secrets-<region>.yaml
# The Secrets are not part of the Kustomize tree on purpose: `kubectl apply -k` must never
# replace real keys with placeholders. deploy/azure/RUNBOOK.md, "Certificates".
set -euo pipefail

out=${HOME:?}/geosteer-etcd-pki
domain=geosteer.internal
namespace=geosteer
days=365
ca_days=3650
trust=()
regions=()

usage() { sed -n '2,/^set -euo pipefail/{/^set/!p;}' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -o|--out) out=$2; shift 2 ;;
    --domain) domain=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --trust) trust+=("$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option $1" >&2; usage 64 ;;
    *) regions+=("$1"); shift ;;
  esac
done
[ ${#regions[@]} -gt 0 ] || regions=(westeurope eastus southeastasia)
command -v openssl >/dev/null || { echo "make-certs.sh needs openssl" >&2; exit 69; }

umask 077
mkdir -p "$out"
chmod 700 "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The CA: P-256, CA:TRUE, may sign end-entity certificates only.
if [ ! -f "$out/ca.key" ]; then
  newkey "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" \
    -subj "/O=geosteer/CN=geosteer etcd CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$out/ca.crt"
  echo "created CA $out/ca.crt (valid $ca_days days)"
else
  echo "using CA $out/ca.crt"
fi

cat "$out/ca.crt" > "$out/ca-bundle.crt"
for t in ${trust[@]+"${trust[@]}"}; do
  openssl x509 -in "$t" -noout >/dev/null
  cat "$t" >> "$out/ca-bundle.crt"
done

# issue NAME CN EKU [SAN]: NAME.key and NAME.crt signed by the CA.
issue() {
  local name=$1 cn=$2 eku=$3 san=${4:-}
  newkey "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/O=geosteer/CN=$cn" -out "$tmp/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    # Client certificates carry no subjectAltName: etcd would otherwise require the client's
    # source address to match it.
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
    -extfile "$tmp/$name.ext" -out "$out/$name.crt" 2>/dev/null
  openssl verify -CAfile "$out/ca.crt" "$out/$name.crt" >/dev/null
  echo "issued $out/$name.crt  CN=$cn  until $(openssl x509 -in "$out/$name.crt" -noout -enddate | cut -d= -f2)"
}

issue geosteer geosteer clientAuth
issue admin root clientAuth
for r in "${regions[@]}"; do
  # The name the other regions use (private DNS), the in-cluster names, and loopback (etcdctl
  # in the pod, kubectl port-forward).
  issue "member-$r" etcd-peer serverAuth,clientAuth \
    "DNS:etcd-$r.$domain,DNS:etcd-member.$namespace.svc,DNS:etcd-member.$namespace.svc.cluster.local,DNS:etcd-0.etcd.$namespace.svc,DNS:etcd-0.etcd.$namespace.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:::1"
done

b64() { base64 < "$1" | tr -d '\n'; }
secret() { # secret NAME REGION CRT KEY
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: geosteer
    geosteer.example.com/region: $2
type: Opaque
data:
  ca.crt: $(b64 "$out/ca-bundle.crt")
  tls.crt: $(b64 "$3")
  tls.key: $(b64 "$4")
EOF
}
for r in "${regions[@]}"; do
  {
    echo "# etcd and geosteer TLS for region $r — made by deploy/etcd/make-certs.sh. Holds private keys."
    secret etcd-member-tls "$r" "$out/member-$r.crt" "$out/member-$r.key"
    secret etcd-admin-tls "$r" "$out/admin.crt" "$out/admin.key"
    secret geosteer-etcd-client "$r" "$out/geosteer.crt" "$out/geosteer.key"
  } > "$out/secrets-$r.yaml"
  echo "wrote $out/secrets-$r.yaml  (kubectl --context aks-$r apply -f $out/secrets-$r.yaml)"
done
