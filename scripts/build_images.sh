#!/usr/bin/env bash
# Build FedOps' images offline on the engine DOCKER_HOST names (scripts/docker_engine.sh start):
#   1. the local base image `fedops-base:bookworm-python3.11` (stands in for python:3.11-slim), imported
#      with `docker import` from the root filesystem scripts/install_docker.sh made (no registry);
#   2. wheels of every Python dependency, built on this host (`pip wheel`), cached by the hash of
#      pyproject.toml; the images install them with `pip --no-index --find-links` (no network in a build);
#   3. fedops-control, fedops-agent and fedops-dashboard from docker/*.Dockerfile, with BASE_IMAGE set to
#      the local base and EXTRAS without the examples' torch (the images stay small).
# Everything is cached outside the repo (FEDOPS_DOCKER_CACHE, default ~/.cache/fedops-docker), and the
# engine's own layer cache lives in its data root there too: a second run rebuilds nothing.
#
#   DOCKER_HOST=$(scripts/docker_engine.sh start) scripts/build_images.sh [control agent dashboard]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="${FEDOPS_DOCKER_CACHE:-$HOME/.cache/fedops-docker}"
BASE_TAR="$CACHE/base/debian-bookworm-python3.11.tar"
BASE_IMAGE="${FEDOPS_BASE_IMAGE:-fedops-base:bookworm-python3.11}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DOCKER=/usr/bin/docker   # Debian's client, the engine's own version
: "${DOCKER_HOST:?set DOCKER_HOST to FedOps engine (DOCKER_HOST=\$(scripts/docker_engine.sh start))}"
export DOCKER_HOST DOCKER_BUILDKIT=0
IMAGES=("$@")
[ "${#IMAGES[@]}" -gt 0 ] || IMAGES=(control agent dashboard)
# What each image installs (the control image runs the ServerApps: numpy is a core dependency).
declare -A EXTRAS=([control]="postgres,kubernetes" [agent]="" [dashboard]="")  # kubernetes: the launcher and Flower's executor

# 1. Base image.
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ -s "$BASE_TAR" ] || { echo "no base root filesystem at $BASE_TAR: run scripts/install_docker.sh" >&2; exit 1; }
  echo "build_images: docker import $BASE_TAR -> $BASE_IMAGE"
  "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# 2. Wheels, keyed by pyproject.toml (and the host's Python, which must match the images': 3.11).
key="$( (cat pyproject.toml; "$PYTHON" -V) | sha256sum | cut -c1-16)"
WHEELS="$CACHE/wheels/$key"
if [ ! -f "$WHEELS/.complete" ]; then
  echo "build_images: pip wheel (dependencies of .[postgres,dashboard,kubernetes]) -> $WHEELS"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$PYTHON" -m pip wheel -q -w "$WHEELS" ".[postgres,dashboard,kubernetes]" "setuptools>=68" wheel
  rm -f "$WHEELS"/fedops_stack-*.whl   # the project itself is installed from its sources
  touch "$WHEELS/.complete"
fi

# 3. A build context of the project's files (not .venv, .cache or .git), with the wheels in
#    docker/wheels/, where the Dockerfiles look for them.
CONTEXT="$CACHE/context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md \
  'fedops_*' observability examples docker \
  | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | tar --null -T - -cf - | tar -C "$CONTEXT" -xf -
mkdir -p "$CONTEXT/docker/wheels"
cp -l "$WHEELS"/*.whl "$CONTEXT/docker/wheels/" 2>/dev/null || cp "$WHEELS"/*.whl "$CONTEXT/docker/wheels/"

for image in "${IMAGES[@]}"; do
  start=$(date +%s)
  args=(-f "$CONTEXT/docker/$image.Dockerfile" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_NO_INDEX=1
        --build-arg EXTRAS="${EXTRAS[$image]}")
  # The build stage tagged too: what the next build reuses (its dependency layer) is then never
  # an untagged image, and the prune below may take every untagged one.
  "$DOCKER" build -q --target build -t "fedops-$image-build:latest" "${args[@]}" "$CONTEXT" >/dev/null
  "$DOCKER" build -q -t "fedops-$image:latest" "${args[@]}" "$CONTEXT" >/dev/null
  size=$("$DOCKER" image inspect -f '{{.Size}}' "fedops-$image:latest")
  echo "build_images: fedops-$image:latest $((size / 1000000)) MB ($(($(date +%s) - start)) s)"
done
# Superseded images go at once: kept for three days (as before), each commit built added ~4 GB to
# the engine's data root (35 GB, 92 images seen after a day's work). Wheels of older pins go too.
"$DOCKER" image prune -f >/dev/null
find "$CACHE/wheels" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
