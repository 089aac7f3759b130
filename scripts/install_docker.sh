#!/usr/bin/env bash
# Install a Docker engine from Debian's packages (docker.io, containerd, runc) and make the local
# base image's root filesystem, without any container registry:
#   debootstrap a minimal Debian bookworm (Python 3.11, as python:3.11-slim) into a folder, slim it,
#   and keep it as a tarball that scripts/build_images.sh imports with `docker import`.
# Idempotent and cached outside the repo (FEDOPS_DOCKER_CACHE, default ~/.cache/fedops-docker): a second
# run does nothing. Starts no engine: scripts/docker_engine.sh does, on its own socket and data root.
set -euo pipefail
CACHE="${FEDOPS_DOCKER_CACHE:-$HOME/.cache/fedops-docker}"
BASE_TAR="$CACHE/base/debian-bookworm-python3.11.tar"
SUITE=bookworm
MIRROR="${FEDOPS_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\/\?\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$CACHE/base"

need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
[ -x /usr/bin/containerd ] || need+=(containerd)
[ -x /usr/sbin/runc ] || need+=(runc)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  echo "install_docker: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The package's own engine (systemd) is not ours: ours runs on its own socket and data root.
  systemctl disable --now docker.service docker.socket containerd.service 2>/dev/null || true
fi

if [ ! -s "$BASE_TAR" ]; then
  echo "install_docker: debootstrap $SUITE (minbase + python3) -> $BASE_TAR"
  root="$(mktemp -d "$CACHE/base/rootfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  # python3-venv: ensurepip, as in python:3.11-slim; python-is-python3: `python`; git: tasks whose
  # Flower app comes from a git URL (the control image); ca-certificates: TLS to public services.
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,git,ca-certificates \
    "$SUITE" "$root" "$MIRROR" >"$CACHE/base/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE/base/debootstrap.log"; exit 1; }
  # Slim: no package lists, caches, docs, man pages or locales (as the python:*-slim images).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/* \
         "$root"/usr/share/locale/* "$root"/usr/share/i18n/* "$root"/debootstrap
  find "$root"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} +
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
fi
echo "install_docker: ok ($(du -h "$BASE_TAR" | cut -f1) base rootfs at $BASE_TAR)"
