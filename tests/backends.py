"""Real Elasticsearch and Prometheus servers on loopback for the tests.

`scripts/install_backends.sh` (run by `make test`) installs them; a test that needs one
and cannot find it fails with a message saying so (it does not skip).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedops_common.net import free_port

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ROOT / ".cache" / "backends"
ES_HOME = BACKENDS / "elasticsearch"
ES_USER = "fedops-es"
PROMETHEUS_YML = ROOT / "observability" / "prometheus" / "prometheus.yml"


def _missing(what: str) -> AssertionError:
    return AssertionError(f"{what} is not installed: run scripts/install_backends.sh (make test does)")


def http_json(url: str, data: Any = None, method: str | None = None, timeout: float = 10) -> Any:
    """GET (or send ``data`` as JSON) and decode the JSON answer."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:  # keep the server's reason in the message
        raise RuntimeError(f"{method or ('POST' if body else 'GET')} {url}: {err.code} {err.read()[:500]!r}") from None


def wait_until(check: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:
            last_error = err
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})")


@dataclass
class Elasticsearch:
    """A single-node Elasticsearch (the Maven Central integ-test-zip) under ``root``."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> tuple[dict[str, str], dict[str, Any]]:
        if not (ES_HOME / "bin" / "elasticsearch").exists():
            raise _missing(f"Elasticsearch ({ES_HOME})")
        conf = self.root / "config"
        if not conf.exists():
            shutil.copytree(ES_HOME / "config", conf)
            (self.root / "data").mkdir(parents=True)
            (self.root / "logs").mkdir()
            options = conf / "jvm.options"  # its GC, heap-dump and error logs are relative to ES's home
            options.write_text(options.read_text(encoding="utf-8").replace("logs/", f"{self.root}/logs/"),
                               encoding="utf-8")
        self.port = self.port or free_port()
        (conf / "elasticsearch.yml").write_text(
            "cluster.name: fedops-test\n"
            "discovery.type: single-node\n"
            "xpack.security.enabled: false\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {self.port}\n"
            f"transport.port: {free_port()}\n"
            f"path.data: {self.root / 'data'}\n"
            f"path.logs: {self.root / 'logs'}\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
            "action.destructive_requires_name: false\n", encoding="utf-8")
        java = Path(shutil.which("java") or "").resolve()
        env = dict(os.environ, ES_PATH_CONF=str(conf), ES_JAVA_HOME=str(java.parents[1]),
                   ES_JAVA_OPTS="-Xms384m -Xmx384m -XX:-UseContainerSupport")
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # Elasticsearch refuses to run as root
            try:
                user = pwd.getpwnam(ES_USER)
            except KeyError:
                raise _missing(f"the {ES_USER} user") from None
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(self.root)], check=True)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.root)
        return env, kwargs

    def start(self, timeout_s: float = 120) -> Elasticsearch:
        """Start (or restart, keeping the data) and wait until the cluster answers."""
        env, kwargs = self._prepare()
        out = open(self.root / "stdout.log", "ab")
        self.process = subprocess.Popen([str(ES_HOME / "bin" / "elasticsearch")], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
                                        **kwargs)
        out.close()

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.root / "stdout.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"Elasticsearch exited with {self.process.returncode}:\n{tail}")
            health = http_json(f"{self.url}/_cluster/health", timeout=2)
            return health["status"] in ("green", "yellow")

        wait_until(healthy, timeout_s, "Elasticsearch to start")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        from fedops_common.proc import stop_process_group

        stop_process_group(self.process, grace_s=30)
        self.process = None

    def refresh(self) -> None:
        http_json(f"{self.url}/_refresh", method="POST")

    def search(self, index: str, query: dict[str, Any], size: int = 100, **body: Any) -> dict[str, Any]:
        """POST _search (after a refresh)."""
        self.refresh()
        return http_json(f"{self.url}/{index}/_search", data={"query": query, "size": size,
                                                              "track_total_hits": True, **body}, method="POST")

    def count(self, index: str, query: dict[str, Any] | None = None) -> int:
        self.refresh()
        return int(http_json(f"{self.url}/{index}/_count", data={"query": query or {"match_all": {}}},
                             method="POST")["count"])


def prometheus_config(control_metrics: str) -> str:
    """The shipped prometheus.yml with its targets pointed at this stack and 1 s scrapes."""
    text = PROMETHEUS_YML.read_text(encoding="utf-8")
    text = text.replace("fedops-control:9464", control_metrics).replace("scrape_interval: 15s", "scrape_interval: 1s")
    text = text.replace("evaluation_interval: 15s", "evaluation_interval: 1s")
    text = text.replace("rules/fedops.rules.yml", str(PROMETHEUS_YML.parent / "rules" / "fedops.rules.yml"))
    return text.replace("refresh_interval: 15s", "refresh_interval: 1s")


@dataclass
class Prometheus:
    """A Prometheus server (Debian package) under ``root`` with a given configuration."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config_yaml: str, rule_files: list[Path] | None = None, timeout_s: float = 60) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise _missing("prometheus")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self.root / "prometheus.yml"
        config.write_text(config_yaml, encoding="utf-8")
        out = open(self.root / "stdout.log", "ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        wait_until(lambda: urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200, timeout_s,
                   "Prometheus to start")
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = http_json(url)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def query_range(self, promql: str, start: float, end: float, step_s: float = 2) -> list[dict[str, Any]]:
        """Range query (what a Grafana panel runs); returns the result matrix."""
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": promql, "start": start, "end": end, "step": step_s})
        answer = http_json(url)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        return http_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]

    def stop(self) -> None:
        if self.process is None:
            return
        from fedops_common.proc import stop_process_group

        stop_process_group(self.process, grace_s=15)
        self.process = None


def es_ready(es: Elasticsearch) -> bool:
    try:
        http_json(f"{es.url}/_cluster/health", timeout=2)
        return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster (Debian's server binaries) on loopback, trust auth."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "fedops") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout_s: float = 60) -> Postgres:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise _missing("PostgreSQL server (initdb)")
        bin_dir = found[-1].parent
        self.port = self.port or free_port()
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = pwd.getpwnam("postgres")
            subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(self.root)], check=True)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        data = self.root / "data"
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                       check=True, capture_output=True, cwd=self.root, **kwargs)
        out = open(self.root / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.root),
             "-c", "fsync=off"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, **kwargs)
        out.close()
        wait_until(lambda: subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                          capture_output=True).returncode == 0, timeout_s, "PostgreSQL to start")
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "fedops"],
                       check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        from fedops_common.proc import stop_process_group

        stop_process_group(self.process, grace_s=15)
        self.process = None
