"""The README's quick-start commands work as written against a running stack."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

from deploy.template import ROOT
from tests.conftest import Workers
from tests.support import Api


def test_readme_curl_examples_work_verbatim(api: Api, workers: Workers) -> None:
    workers.start(1)
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin -->\s*```bash\n(.*?)```", readme, re.S)
    assert block is not None, "the README lost its quick-start block"
    # Only the base URL and the username change: this stack is not on 8080, and
    # "alice" may exist already.
    script = block.group(1).replace("http://127.0.0.1:8080", api.base_url)
    script = script.replace('"alice"', f'"alice-{uuid.uuid4().hex[:8]}"')

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    registered, status, listing = (json.loads(line) for line in lines)
    assert "id" in registered
    assert status["status"] == "done" and status["result"] == {"slept_ms": 500.0}
    assert [item["request_id"] for item in listing["items"]] == [status["request_id"]]
