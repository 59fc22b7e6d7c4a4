"""Debian's Prometheus on 127.0.0.1, scraping a running Lanes stack with our alert rules.

It uses observability/prometheus/prometheus.yml as it is, with only the targets,
the intervals and the rule file's path changed, so what the tests prove is what
an operator runs. Ctrl-C stops it.

    python -m deploy.prometheus [--target 127.0.0.1:8080] [--port 9090] [--interval 15s]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from deploy.template import ROOT

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
OBSERVABILITY = ROOT / "observability"
CONFIG = OBSERVABILITY / "prometheus" / "prometheus.yml"


def config(targets: list[str], interval: str) -> dict[str, Any]:
    """The shipped configuration, pointed at `targets`, scraping and evaluating every `interval`."""
    settings = yaml.safe_load(CONFIG.read_text())
    settings["global"]["scrape_interval"] = interval
    settings["global"]["evaluation_interval"] = interval
    settings["rule_files"] = [str(CONFIG.parent / name) for name in settings["rule_files"]]
    for job in settings["scrape_configs"]:
        job["static_configs"] = [{"targets": targets}]
    return dict(settings)


@dataclass
class Prometheus:
    """A running Prometheus and the few HTTP API calls Lanes' checks need."""

    url: str
    process: subprocess.Popen[bytes] | None = None  # None: one that runs elsewhere

    def api(self, path: str, **params: Any) -> Any:
        query = f"?{urlencode(params, doseq=True)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query answers 400 with its reason
            body = json.load(error)
        if body.get("status") != "success":
            raise ValueError(f"Prometheus refused {path} {params}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result as a vector (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def series(self, match: str) -> list[dict[str, str]]:
        return list(self.api("series", **{"match[]": match}))

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(targets: list[str], port: int, data_dir: Path, interval: str = "15s", timeout: float = 60) -> Prometheus:
    """Start Prometheus on 127.0.0.1:port with its data, config and log under data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(targets, interval), sort_keys=False))
    log = (data_dir / "prometheus.log").open("ab")
    argv = [
        PROMETHEUS,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    process = subprocess.Popen(argv, stdout=log, stderr=log)
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + timeout
    while not prometheus.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            prometheus.stop()
            raise RuntimeError(f"Prometheus did not start; see {data_dir / 'prometheus.log'}")
        time.sleep(0.2)
    return prometheus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", help="host:port of a Lanes base URL (repeatable)")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".lanes" / "prometheus")
    args = parser.parse_args(argv)
    prometheus = start(args.target or ["127.0.0.1:8080"], args.port, args.data_dir.resolve(), args.interval)
    process = prometheus.process
    assert process is not None
    print(f"Prometheus is serving on {prometheus.url} (Ctrl-C stops it)", flush=True)
    # Only forward the signal: waiting here, inside the handler, would deadlock with the wait below.
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        prometheus.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
