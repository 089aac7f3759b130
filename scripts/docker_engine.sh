#!/usr/bin/env bash
# Start or stop FedOps' own Docker engine (Debian's dockerd; scripts/install_docker.sh installs it):
# its own socket, exec root and pidfile under /run, its data root cached under FEDOPS_DOCKER_CACHE
# (default ~/.cache/fedops-docker), so images built once stay for the next run. It never touches a
# host engine's default socket.
#
#   scripts/docker_engine.sh start     # prints the DOCKER_HOST to export
#   scripts/docker_engine.sh stop      # removes every container first, then stops the engine by its pidfile
set -euo pipefail
CACHE="${FEDOPS_DOCKER_CACHE:-$HOME/.cache/fedops-docker}"
RUN_DIR="${FEDOPS_DOCKER_RUN:-/run/fedops-docker}"
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
export DOCKER_HOST="unix://$SOCK"
DOCKER=/usr/bin/docker   # Debian's client, the engine's own version

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  start)
    [ -x /usr/sbin/dockerd ] || { echo "dockerd is not installed: run scripts/install_docker.sh" >&2; exit 1; }
    mkdir -p "$RUN_DIR" "$CACHE/docker"
    if ! running; then
      # --bridge=none: no docker0 bridge and no NAT rules; FedOps' containers use the host's network.
      # containerd runs as dockerd's child (its own state under the exec root).
      setsid /usr/sbin/dockerd --host "$DOCKER_HOST" --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" \
        --pidfile "$PIDFILE" --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
        --storage-driver overlay2 --containerd-namespace fedops --containerd-plugins-namespace fedops-plugins \
        </dev/null >"$RUN_DIR/dockerd.log" 2>&1 &
      for _ in $(seq 120); do
        "$DOCKER" version >/dev/null 2>&1 && break
        sleep 0.5
      done
    fi
    "$DOCKER" version --format 'docker engine {{.Server.Version}} at '"$DOCKER_HOST" >&2 \
      || { tail -20 "$RUN_DIR/dockerd.log" >&2; exit 1; }
    echo "$DOCKER_HOST"
    ;;
  stop)
    if running; then
      ids="$("$DOCKER" ps -aq || true)"
      [ -z "$ids" ] || "$DOCKER" rm -f $ids >/dev/null || true
      pid="$(cat "$PIDFILE")"
      kill -TERM "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$PIDFILE"
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
