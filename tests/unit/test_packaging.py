"""Each function is deployable alone: its own recipe, pins that agree with the root's."""

from pathlib import Path

import pytest

from deploy.template import ROOT, load


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned"
            pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("function", [f.name for f in load().functions])
def test_function_has_its_own_recipe_with_the_root_pins(function: str) -> None:
    folder = ROOT / load().function(function).source
    assert (folder / "Dockerfile").is_file()
    root_pins = _pins(ROOT / "requirements.txt")
    for name, version in _pins(folder / "requirements.txt").items():
        assert root_pins.get(name) == version, f"{function} pins {name}=={version}, the root pins {root_pins.get(name)}"
