"""A real Prometheus Pushgateway and Prometheus server for the tests, on free loopback ports.

Both are the Debian packages' binaries (``make test`` installs them as root); a test
that needs one is skipped where it is missing. Each process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import wait_until
from sshd import free_port

# Prometheus scrapes and evaluates every second so that a test sees a push, and an
# alert's pending and firing states, within a few seconds.
SCRAPE_SECONDS = 1


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not installed (make test installs it as root)")


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
        return bool(response.status == 200)
    return False


@contextlib.contextmanager
def _process(make_args: Callable[[int], list[str]], log: Path) -> Iterator[str]:
    """Start a server on a free port and yield its URL once it is ready.

    free_port() only finds a port that was free a moment ago: a server that lost
    the race exits at once, and another process answers on that port. So "ready"
    means our process is still alive after answering; otherwise try another port.
    """
    for _attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            proc = subprocess.Popen(make_args(port), stdout=out, stderr=subprocess.STDOUT)
        try:
            if _started(proc, url):
                yield url
                return
        finally:
            _stop(proc)
    pytest.fail(f"{Path(make_args(0)[0]).name} did not start: {log.read_text(errors='replace')[-2000:]}")


def _started(proc: subprocess.Popen[bytes], url: str) -> bool:
    wait_until(lambda: proc.poll() is not None or _ready(url), timeout=20, interval=0.1)
    time.sleep(0.2)  # a server that failed to bind has exited by now
    return proc.poll() is None and _ready(url)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def running_pushgateway() -> Iterator[str]:
    """A Pushgateway on a free port; yields its base URL."""
    binary = _binary("prometheus-pushgateway", "pushgateway")
    with tempfile.TemporaryDirectory(prefix="pushgateway-") as tmp:
        log = Path(tmp) / "pushgateway.log"
        # Debian's build persists to /var/lib/prometheus by default, which every test
        # on the machine would share: keep each gateway's groups in its own memory.
        args = [binary, "--persistence.file="]
        with _process(lambda port: [*args, f"--web.listen-address=127.0.0.1:{port}"], log) as url:
            yield url


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: object) -> Any:
        """The ``data`` of a Prometheus HTTP API answer; an error answer fails the test with its message."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, object] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        return result


@contextlib.contextmanager
def running_prometheus(workdir: Path, pushgateway: str, rules: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``pushgateway`` (honor_labels, as the README says) and evaluating ``rules``."""
    binary = _binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [urllib.parse.urlsplit(pushgateway).netloc]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def args(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]

    with _process(args, workdir / "prometheus.log") as url:
        yield Prometheus(url)
