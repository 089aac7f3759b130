#!/usr/bin/env bash
# Build the real Kubernetes control-plane pieces the Kubernetes tests run against, from the Go
# module proxy only (no other internet is reachable here):
#   kube-apiserver, kube-scheduler and kube-controller-manager (k8s.io/kubernetes: the scheduler marks
#   pods unschedulable, the controller manager keeps quotas and deletes namespaces),
#   etcd (go.etcd.io/etcd/server/v3), kwok (plays nodes and
#   the kubelet's pod phases) and helm (chart lint/template).
# Idempotent: a binary already in the cache is not rebuilt. The cache lives outside the repo
# (default ~/.cache/fedops-k8s/bin, override with FEDOPS_K8S_BIN) because a first kube-apiserver
# build takes 10-20+ minutes on two cores and every worktree should share it.
# Set FEDOPS_K8S_NICE=1 to build at the lowest CPU priority (a shared machine).
# With --background (what `make test` uses), what is missing is built at the lowest priority in the
# background while the other tests run; the Kubernetes tests, which pytest runs last, wait for it
# (tests/kube.py reads the build's status file). On a cached machine it returns at once.
set -euo pipefail
K8S_VERSION="${FEDOPS_K8S_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"          # k8s.io/api etc. are published as v0.<minor>.<patch>
ETCD_VERSION="${FEDOPS_ETCD_VERSION:-v3.7.3}"
KWOK_VERSION="${FEDOPS_KWOK_VERSION:-latest}"
HELM_VERSION="${FEDOPS_HELM_VERSION:-v3.22.0}"
BIN="${FEDOPS_K8S_BIN:-$HOME/.cache/fedops-k8s/bin}"
WORK="$(dirname "$BIN")/src"
GO="$(command -v go || echo /usr/local/go/bin/go)"
NICE=()
[ "${FEDOPS_K8S_NICE:-0}" = 1 ] && NICE=(nice -n 19)
mkdir -p "$BIN" "$WORK"

if [ "${1:-}" = "--background" ]; then
  STATUS="$(dirname "$BIN")/build.status"
  LOG="$(dirname "$BIN")/build.log"
  missing=""
  for name in etcd kwok helm kube-apiserver kube-scheduler kube-controller-manager; do
    [ -x "$BIN/$name" ] || missing="$missing $name"
  done
  if [ -z "$missing" ]; then
    echo "install_k8s: ok, all cached ($BIN)"
    exit 0
  fi
  state="" pid=""
  [ -f "$STATUS" ] && read -r state pid < "$STATUS"
  if [ "${state:-}" = running ] && kill -0 "${pid:-0}" 2>/dev/null; then
    echo "install_k8s: a build is already running (pid $pid, log $LOG)"
    exit 0
  fi
  echo "install_k8s: building$missing in the background (log $LOG); the Kubernetes tests wait for it"
  FEDOPS_K8S_NICE=1 setsid bash -c '"$0"; echo "exit $?" > "$1"' "$0" "$STATUS" > "$LOG" 2>&1 < /dev/null &
  echo "running $!" > "$STATUS"
  exit 0
fi

if [ ! -x "$BIN/etcd" ]; then
  echo "install_k8s: etcd $ETCD_VERSION"
  dir="$("$GO" mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$WORK/etcd" && cp -r "$dir" "$WORK/etcd" && chmod -R u+w "$WORK/etcd"
  # The module's go.mod replaces its sibling modules with ../ paths that the module zip lacks.
  python3 - "$WORK/etcd/go.mod" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r"(?ms)^replace \(.*?^\)\n", "", s)
s = re.sub(r"(?m)^replace .*\n", "", s)
open(p, "w").write(s)
EOF
  (cd "$WORK/etcd" && GOFLAGS=-mod=mod "${NICE[@]}" "$GO" build -o "$BIN/etcd.tmp" . && mv "$BIN/etcd.tmp" "$BIN/etcd")
fi

if [ ! -x "$BIN/kwok" ]; then
  echo "install_k8s: kwok $KWOK_VERSION"
  GOBIN="$BIN" "${NICE[@]}" "$GO" install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi

if [ ! -x "$BIN/helm" ]; then
  echo "install_k8s: helm $HELM_VERSION"
  GOBIN="$BIN" "${NICE[@]}" "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
for component in kube-apiserver kube-scheduler kube-controller-manager; do
  [ -x "$BIN/$component" ] && continue
  echo "install_k8s: $component $K8S_VERSION (slow the first time)"
  if [ ! -f "$WORK/kubernetes/.prepared-$K8S_VERSION" ]; then
    dir="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$WORK/kubernetes" && cp -r "$dir" "$WORK/kubernetes" && chmod -R u+w "$WORK/kubernetes"
    rm -rf "$WORK/kubernetes/vendor" "$WORK/kubernetes/go.work" "$WORK/kubernetes/go.work.sum"
    # The module's go.mod replaces k8s.io/* with ./staging/... paths its zip lacks: use the published ones.
    sed -i -E "s#^(\s*)(k8s.io/[a-z0-9-]+) => ./staging/src/k8s.io/[a-z0-9-]+#\1\2 => \2 $STAGING_VERSION#" \
      "$WORK/kubernetes/go.mod"
    touch "$WORK/kubernetes/.prepared-$K8S_VERSION"
  fi
  (cd "$WORK/kubernetes" && GOFLAGS=-mod=mod "${NICE[@]}" "$GO" build -o "$BIN/$component.tmp" "./cmd/$component" \
    && mv "$BIN/$component.tmp" "$BIN/$component")
done
echo "install_k8s: ok ($BIN)"
