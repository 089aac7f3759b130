#!/usr/bin/env bash
# Install the real servers and tools the test suite runs against, from package registries only:
#   Debian: Prometheus + promtool + Pushgateway, PostgreSQL, docker-compose, Chromium + chromedriver;
#   Maven Central: Elasticsearch 8.x (integ-test-zip, run with the machine's Java 17);
#   Go module proxy: grpcurl. (hadolint and Selenium come with the Python dev extra.)
# Idempotent: what is already installed is skipped. Everything lands under .cache/backends/
# except the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ES_VERSION="${FEDOPS_ES_VERSION:-8.17.4}"
DEST="$PWD/.cache/backends"
mkdir -p "$DEST/bin"

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need_apt+=(prometheus-pushgateway)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)   # `config` checks of docker/*.yml
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install_backends: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package starts its own Prometheus on :9090; the tests start theirs on free ports.
  systemctl stop prometheus prometheus-pushgateway postgresql 2>/dev/null || true
  pkill -x prometheus 2>/dev/null || true
  pkill -x prometheus-pushgateway 2>/dev/null || true
fi

if [ ! -x "$DEST/elasticsearch-$ES_VERSION/bin/elasticsearch" ]; then
  echo "install_backends: Elasticsearch $ES_VERSION from Maven Central"
  zip="$HOME/.m2/repository/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_VERSION/elasticsearch-$ES_VERSION.zip"
  [ -f "$zip" ] || mvn -q dependency:get -Dtransitive=false \
    -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip"
  rm -rf "$DEST/elasticsearch-$ES_VERSION"
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$zip" "$DEST"
  chmod +x "$DEST/elasticsearch-$ES_VERSION"/bin/*
fi
ln -sfn "$DEST/elasticsearch-$ES_VERSION" "$DEST/elasticsearch"
# Elasticsearch refuses to run as root: the harness runs it as this user.
id fedops-es >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin fedops-es 2>/dev/null || true

if [ ! -x "$DEST/bin/grpcurl" ]; then
  echo "install_backends: grpcurl (go install)"
  GOBIN="$DEST/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi
echo "install_backends: ok"
