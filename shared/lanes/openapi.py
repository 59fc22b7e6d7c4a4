"""The OpenAPI description of the HTTP API, shipped inside the package."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def load_openapi() -> dict[str, Any]:
    document = yaml.safe_load(resources.files("lanes").joinpath("openapi.yaml").read_text())
    if not isinstance(document, dict):
        raise ValueError("openapi.yaml is not a mapping")
    return document
