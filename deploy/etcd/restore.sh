#!/usr/bin/env bash
# restore.sh — rebuild geosteer's etcd cluster (all members, every region) from a snapshot made
# with `etcdctl snapshot save` (deploy/azure/RUNBOOK.md, "Backup and restore").
#
#   deploy/etcd/restore.sh [--yes] SNAPSHOT.db
#
# What it does, in this order:
#   1. checks the snapshot (etcdutl snapshot status);
#   2. stops the etcd member of every region (StatefulSet etcd scaled to 0);
#   3. per region: restores the snapshot into a fresh data directory on this machine (new
#      cluster ID, revisions bumped past the old cluster's so geosteer's watches never see
#      time go backwards), and copies it onto the member's volume with a helper pod, after
#      moving the old data aside (data.before-restore-<time>, on the same volume);
#   4. starts the members again and waits for `etcdctl endpoint health --cluster`.
# geosteer keeps answering DNS throughout (last state seen); operator changes are refused
# until step 4 is done, and then every instance reconciles to the restored state.
#
# Needs: kubectl with one context per region, and etcdutl ≥ 3.5.10 of the cluster's release
# (from the etcd release archive) on PATH.
# Environment: REGIONS ("westeurope eastus southeastasia"), CONTEXT_PREFIX ("aks-"),
# NAMESPACE ("geosteer"), DOMAIN ("geosteer.internal"), HELPER_IMAGE ("busybox:1.36.1").
set -euo pipefail

REGIONS=${REGIONS:-westeurope eastus southeastasia}
CONTEXT_PREFIX=${CONTEXT_PREFIX:-aks-}
NAMESPACE=${NAMESPACE:-geosteer}
DOMAIN=${DOMAIN:-geosteer.internal}
HELPER_IMAGE=${HELPER_IMAGE:-busybox:1.36.1}

yes=false
if [ "${1:-}" = "--yes" ]; then yes=true; shift; fi
[ $# -eq 1 ] || { sed -n '2,/^set -euo pipefail/{/^set/!p;}' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
snapshot=$1
[ -f "$snapshot" ] || { echo "no snapshot file $snapshot" >&2; exit 66; }
command -v kubectl >/dev/null || { echo "restore.sh needs kubectl" >&2; exit 69; }
command -v etcdutl >/dev/null || { echo "restore.sh needs etcdutl (≥ 3.5.10) on PATH" >&2; exit 69; }

k() { local r=$1; shift; kubectl --context "$CONTEXT_PREFIX$r" -n "$NAMESPACE" "$@"; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
initial_cluster=""
for r in $REGIONS; do
  initial_cluster+="${initial_cluster:+,}etcd-$r=https://etcd-$r.$DOMAIN:2380"
done

echo "== 1. snapshot"
etcdutl snapshot status "$snapshot" -w table
echo "Restore this snapshot into the etcd members of: $REGIONS"
echo "(new cluster token geosteer-etcd-restored-$stamp; old data kept as data.before-restore-$stamp)"
if ! $yes; then
  read -r -p "Type 'restore' to go on: " answer
  [ "$answer" = restore ] || { echo "nothing done"; exit 1; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== 2. stop every member"
for r in $REGIONS; do
  k "$r" scale statefulset etcd --replicas=0
done
for r in $REGIONS; do
  k "$r" wait --for=delete pod/etcd-0 --timeout=180s 2>/dev/null || true
  if k "$r" get pod etcd-0 >/dev/null 2>&1; then
    echo "etcd-0 in $r is still running; stop it and run again" >&2
    exit 1
  fi
done

helper() { # the pod that mounts the member's volume (restricted Pod Security Standard)
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: etcd-restore
  labels:
    app.kubernetes.io/name: etcd-restore
    app.kubernetes.io/part-of: geosteer
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: restore
      image: $HELPER_IMAGE
      command: ["sleep", "3600"]
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
      resources:
        limits:
          memory: 64Mi
      volumeMounts:
        - name: data
          mountPath: /var/lib/etcd
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: data-etcd-0
EOF
}

echo "== 3. restore each member's data"
for r in $REGIONS; do
  echo "-- $r"
  etcdutl snapshot restore "$snapshot" \
    --name "etcd-$r" \
    --initial-cluster "$initial_cluster" \
    --initial-cluster-token "geosteer-etcd-restored-$stamp" \
    --initial-advertise-peer-urls "https://etcd-$r.$DOMAIN:2380" \
    --bump-revision 1000000000 --mark-compacted \
    --data-dir "$tmp/$r"
  helper | k "$r" apply -f -
  k "$r" wait --for=condition=Ready pod/etcd-restore --timeout=300s
  k "$r" exec etcd-restore -- sh -c "
    set -e
    if [ -e /var/lib/etcd/data ]; then mv /var/lib/etcd/data /var/lib/etcd/data.before-restore-$stamp; fi
    mkdir -m 700 /var/lib/etcd/data"
  k "$r" cp "$tmp/$r/member" etcd-restore:/var/lib/etcd/data/member
  k "$r" exec etcd-restore -- sh -c 'chmod -R go-rwx /var/lib/etcd/data && ls -la /var/lib/etcd /var/lib/etcd/data/member'
  k "$r" delete pod etcd-restore --wait=true
done

echo "== 4. start every member"
for r in $REGIONS; do
  k "$r" scale statefulset etcd --replicas=1
done
first=${REGIONS%% *}
for _ in $(seq 60); do
  if k "$first" exec etcd-0 -c etcd -- etcdctl endpoint health --cluster 2>/dev/null; then
    k "$first" exec etcd-0 -c etcd -- etcdctl endpoint status --cluster -w table
    echo "restored. Check the fleet: geosteer fleet (RUNBOOK.md)."
    exit 0
  fi
  sleep 5
done
echo "the cluster is not healthy after 5 minutes: kubectl logs etcd-0 in each region" >&2
exit 1
