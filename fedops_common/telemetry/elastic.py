"""Elasticsearch setup: composable index templates (shipped in telemetry/assets/elk/) and aliases."""

from __future__ import annotations

import json
from pathlib import Path

from elasticsearch import ApiError, Elasticsearch

from fedops_common.telemetry.documents import (
    FAMILIES,
    alias_for,
    index_for,
    observability_dir,
)

TEMPLATES_DIR = observability_dir() / "elk" / "index-templates"
COMPONENT_PREFIX = "component-"


def load_templates(directory: Path = TEMPLATES_DIR) -> tuple[dict[str, dict], dict[str, dict]]:
    """(component templates, index templates) by name, from ``*.json`` files in ``directory``."""
    if not directory.is_dir():
        raise FileNotFoundError(f"index templates not found in {directory}")
    components, indices = {}, {}
    for path in sorted(directory.glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        if path.stem.startswith(COMPONENT_PREFIX):
            components[path.stem[len(COMPONENT_PREFIX):]] = body
        else:
            indices[path.stem] = body
    return components, indices


def apply_templates(client: Elasticsearch, directory: Path = TEMPLATES_DIR) -> list[str]:
    """PUT every component and index template, then create today's index of each family so that
    every alias resolves. Idempotent. Returns what was applied."""
    components, indices = load_templates(directory)
    applied = []
    for name, body in components.items():
        client.cluster.put_component_template(name=name, **body)
        applied.append(f"component:{name}")
    for name, body in indices.items():
        client.indices.put_index_template(name=name, **body)
        applied.append(f"index:{name}")
    for family in FAMILIES:
        index = index_for(family, None)
        try:
            client.indices.create(index=index)
            applied.append(f"created:{index}")
        except ApiError as err:
            if err.meta.status != 400 or "resource_already_exists" not in str(err):
                raise
        if not client.indices.exists_alias(name=alias_for(family), index=index):
            raise RuntimeError(f"index {index} lacks alias {alias_for(family)}: is the {family} template applied?")
    return applied
