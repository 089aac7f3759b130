#!/usr/bin/env bash
# Build the real Kubernetes control-plane pieces the Kubernetes tests run against, from the Go
# module proxy only (no other internet is reachable here):
#   kube-apiserver, kube-scheduler and kube-controller-manager (k8s.io/kubernetes: the scheduler marks
#   pods unschedulable, the controller manager keeps quotas and deletes namespaces),
#   etcd (go.etcd.io/etcd/server/v3, the version k8s.io/kubernetes requires), kwok (plays nodes and
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
KWOK_VERSION="${FEDOPS_KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${FEDOPS_HELM_VERSION:-v3.22.0}"
BIN="${FEDOPS_K8S_BIN:-$HOME/.cache/fedops-k8s/bin}"
WORK="$(dirname "$BIN")/src"
GO="$(command -v go || echo /usr/local/go/bin/go)"
NICE=()
[ "${FEDOPS_K8S_NICE:-0}" = 1 ] && NICE=(nice -n 19)
mkdir -p "$BIN" "$WORK"

# Every program is built in one module, the prepared k8s.io/kubernetes with kwok and helm added (and
# etcd at the version Kubernetes itself requires), by one `go build`: the packages they share
# (client-go, apimachinery, grpc, protobuf, ...) are compiled once, and the compiler keeps both cores
# busy across all of them. Built each in its own module, as before, a fresh machine took 8 (etcd),
# 17 (kwok), 5 (helm), 17 (kube-apiserver) and 5 + 5 minutes, one after the other.
declare -A PACKAGE=(
  [kube-apiserver]=./cmd/kube-apiserver
  [kube-scheduler]=./cmd/kube-scheduler
  [kube-controller-manager]=./cmd/kube-controller-manager
  [kwok]=sigs.k8s.io/kwok/cmd/kwok
  [helm]=helm.sh/helm/v3/cmd/helm
  [etcd]=go.etcd.io/etcd/server/v3
)
missing=()
for name in "${!PACKAGE[@]}"; do
  [ -x "$BIN/$name" ] || missing+=("$name")
done

if [ "${1:-}" = "--background" ]; then
  STATUS="$(dirname "$BIN")/build.status"
  LOG="$(dirname "$BIN")/build.log"
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_k8s: ok, all cached ($BIN)"
    exit 0
  fi
  state="" pid=""
  [ -f "$STATUS" ] && read -r state pid < "$STATUS"
  if [ "${state:-}" = running ] && kill -0 "${pid:-0}" 2>/dev/null; then
    echo "install_k8s: a build is already running (pid $pid, log $LOG)"
    exit 0
  fi
  echo "install_k8s: building ${missing[*]} in the background (log $LOG); the Kubernetes tests wait for it"
  FEDOPS_K8S_NICE=1 setsid bash -c '"$0"; echo "exit $?" > "$1"' "$0" "$STATUS" > "$LOG" 2>&1 < /dev/null &
  echo "running $!" > "$STATUS"
  exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install_k8s: ${missing[*]} (k8s.io/kubernetes $K8S_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION; slow the first time)"
  prepared="$WORK/kubernetes/.prepared-$K8S_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
  if [ ! -f "$prepared" ]; then
    dir="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$WORK/kubernetes" && cp -r "$dir" "$WORK/kubernetes" && chmod -R u+w "$WORK/kubernetes"
    rm -rf "$WORK/kubernetes/vendor" "$WORK/kubernetes/go.work" "$WORK/kubernetes/go.work.sum"
    # The module's go.mod replaces k8s.io/* with ./staging/... paths its zip lacks: use the published ones.
    sed -i -E "s#^(\s*)(k8s.io/[a-z0-9-]+) => ./staging/src/k8s.io/[a-z0-9-]+#\1\2 => \2 $STAGING_VERSION#" \
      "$WORK/kubernetes/go.mod"
    (cd "$WORK/kubernetes" && GOFLAGS=-mod=mod "$GO" get "sigs.k8s.io/kwok@$KWOK_VERSION" "helm.sh/helm/v3@$HELM_VERSION")
    touch "$prepared"
  fi
  out="$BIN/.building"
  rm -rf "$out" && mkdir -p "$out"
  packages=()
  for name in "${missing[@]}"; do packages+=("${PACKAGE[$name]}"); done
  (cd "$WORK/kubernetes" && GOFLAGS=-mod=mod "${NICE[@]}" "$GO" build -ldflags="-s -w" -o "$out/" "${packages[@]}")
  [ -x "$out/server" ] && mv "$out/server" "$out/etcd"  # go names a .../v3 package's program after "server"
  for name in "${missing[@]}"; do mv "$out/$name" "$BIN/$name"; done
  rm -rf "$out"
fi
echo "install_k8s: ok ($BIN)"
