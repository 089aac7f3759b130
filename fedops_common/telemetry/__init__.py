"""Telemetry shared by every actor: spooled JSON-lines documents, the Elasticsearch shipper, metrics.

Every document is first appended to a JSON-lines file under the actor's telemetry directory
(the embedded default, and the spool). When Elasticsearch is configured, a :class:`Shipper`
tails those files and bulk-indexes them with deterministic ids, so replays never duplicate.
"""

from fedops_common.telemetry.documents import FAMILIES, alias_for, index_for
from fedops_common.telemetry.writer import TelemetryWriter, telemetry_dir_from_env

__all__ = ["FAMILIES", "TelemetryWriter", "alias_for", "index_for", "telemetry_dir_from_env"]
