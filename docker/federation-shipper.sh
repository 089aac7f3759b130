#!/bin/sh
# A client site's shipping policy (docker/agent-compose.yml, profile `site`): the agent ships all its
# telemetry to the site's own Elasticsearch; this ships, from the agent's spool (read-only), what the
# site lets the federation's Elasticsearch see:
#   FEDOPS_SITE_SHIPPING=all         everything: logs, data status, resources, round metrics
#   FEDOPS_SITE_SHIPPING=aggregates  aggregates and metrics only (data status, resources, round metrics)
#   FEDOPS_SITE_SHIPPING=none        nothing beyond what the control service needs (it gets that over gRPC)
set -eu
spool="${FEDOPS_AGENT_SPOOL:-/var/lib/fedops-agent/telemetry}"
view="${FEDOPS_FEDERATION_VIEW:-/var/lib/fedops-federation}"
case "${FEDOPS_SITE_SHIPPING:-aggregates}" in
  all) families="logs data-status resources round-metrics run-events audit" ;;
  aggregates) families="data-status resources round-metrics" ;;
  none) echo "site policy: nothing is shipped to the federation's Elasticsearch"; exit 0 ;;
  *) echo "FEDOPS_SITE_SHIPPING must be all, aggregates or none" >&2; exit 2 ;;
esac
: "${FEDOPS_FEDERATION_ELASTICSEARCH_URL:?set FEDOPS_FEDERATION_ELASTICSEARCH_URL to the federation's Elasticsearch}"
mkdir -p "$view"
for family in $families; do
  ln -sfn "$spool/$family" "$view/$family"
done
echo "site policy ${FEDOPS_SITE_SHIPPING:-aggregates}: shipping $families to the federation's Elasticsearch"
exec fedops-telemetry ship "$view" --follow --elasticsearch-url "$FEDOPS_FEDERATION_ELASTICSEARCH_URL"
