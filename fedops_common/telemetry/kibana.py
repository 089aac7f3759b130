"""Import FedOps' Kibana saved objects (data views, saved searches, dashboard) through Kibana's
saved-objects API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from fedops_common.telemetry.documents import observability_dir

SAVED_OBJECTS = observability_dir() / "elk" / "kibana" / "saved_objects.ndjson"


class KibanaError(RuntimeError):
    """Kibana refused the import or could not be reached."""


def import_saved_objects(kibana_url: str, path: Path = SAVED_OBJECTS, timeout_s: float = 60) -> dict[str, Any]:
    """POST the NDJSON file to ``/api/saved_objects/_import?overwrite=true`` (idempotent); returns Kibana's answer."""
    boundary = f"fedops-{uuid.uuid4().hex}"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/ndjson\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{kibana_url.rstrip('/')}/api/saved_objects/_import?overwrite=true", data=body, method="POST",
        headers={"kbn-xsrf": "fedops", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise KibanaError(f"Kibana answered {err.code}: {err.read()[:500]!r}") from None
    except OSError as err:
        raise KibanaError(f"Kibana at {kibana_url}: {err}") from None
    if not answer.get("success", False):
        raise KibanaError(f"import incomplete: {json.dumps(answer.get('errors', answer))[:500]}")
    return answer
