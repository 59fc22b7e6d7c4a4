"""Prints the distributions installed in this Python that a lock file does not name.

Used by setup.sh to keep the virtualenv to exactly the lock; pip and the editable
installs of shared/ and client/ are kept.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

KEEP = {"pip", "lanes", "lanes-client"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str) -> None:
    with open(lock, encoding="utf-8") as f:
        locked = {_normal(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", f.read(), re.M)}
    installed = {_normal(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}
    print(" ".join(sorted(installed - locked - KEEP)))


if __name__ == "__main__":
    main(sys.argv[1])
