"""Each function is deployable alone: its own recipe, and a hash-locked image with only what it imports."""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from deploy.template import ROOT, load

FUNCTIONS = [f.name for f in load().functions]
# Run rather than imported: the server the HTTP functions run under, and its event loop.
SERVERS = {"gunicorn": {"register", "login", "enqueue", "status"}, "gevent": {"enqueue", "status"}}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _lock(path: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (version, hashes, the names on its `# via` lines) for one lock file."""
    entries: dict[str, tuple[str, list[str], list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        first = block.splitlines()[0]
        if first.startswith("#"):
            continue
        name, version = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", first).groups()  # type: ignore[union-attr]
        comments = [line.strip().lstrip("#").strip() for line in block.splitlines() if line.strip().startswith("#")]
        via = [c.removeprefix("via").strip().split(" ")[0] for c in comments if c not in ("", "via")]
        entries[_normal(name)] = (version, re.findall(r"--hash=(sha256:\w+)", block), via)
    return entries


def _function_lock(function: str) -> dict[str, tuple[str, list[str], list[str]]]:
    return _lock(ROOT / load().function(function).source / "requirements.lock")


def _imports(path: Path) -> set[str]:
    """Modules imported by one file, leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "lanes":
                found |= {f"lanes.{alias.name}" for alias in node.names}
    return found


@cache
def _third_party_imports(function: str) -> frozenset[str]:
    """Top-level modules outside the standard library that the function reaches through lanes."""
    todo = list((ROOT / load().function(function).source).glob("*.py"))
    seen: set[Path] = set(todo)
    third_party = set()
    while todo:
        for module in _imports(todo.pop()):
            top = module.split(".")[0]
            if top == "lanes":
                base = ROOT / "shared" / module.replace(".", "/")
                for path in (base.with_suffix(".py"), base / "__init__.py"):
                    if path.is_file() and path not in seen:
                        seen.add(path)
                        todo.append(path)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return frozenset(third_party)


@cache
def _modules_of(distribution: str) -> frozenset[str]:
    installed = metadata.packages_distributions()
    return frozenset(m for m, dists in installed.items() if distribution in map(_normal, dists))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_has_its_own_recipe_and_lock(function: str) -> None:
    folder = ROOT / load().function(function).source
    assert (folder / "Dockerfile").is_file()
    assert (folder / "requirements.lock").is_file()
    assert not (folder / "requirements.txt").exists(), "the lock file is the function's only list"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_image_installs_everything_it_imports(function: str) -> None:
    provided = frozenset().union(*(_modules_of(name) for name in _function_lock(function)))
    missing = _third_party_imports(function) - provided
    assert not missing, f"{function} imports {sorted(missing)}, which its requirements.lock does not install"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_image_installs_nothing_it_does_not_import(function: str) -> None:
    # What lanes[<function>] asks for directly must be imported (or be the server it runs
    # under); everything else in the lock is there because one of those needs it.
    imported = _third_party_imports(function)
    for name, (_, _, via) in _function_lock(function).items():
        if "lanes" in via and function not in SERVERS.get(name, set()):
            assert _modules_of(name) & imported, f"{function}'s image installs {name}, which it never imports"


def test_the_worker_image_has_no_web_or_password_packages() -> None:
    worker = _function_lock("worker")
    for name in ("flask", "gunicorn", "pyjwt", "cryptography", "libpass", "argon2-cffi"):
        assert name not in worker


@pytest.mark.parametrize(
    "lock", ["requirements.lock", "requirements-build.lock", *[f"functions/{f}/requirements.lock" for f in FUNCTIONS]]
)
def test_every_locked_package_has_hashes_and_the_development_version(lock: str) -> None:
    development = _lock(ROOT / "requirements.lock")
    for name, (version, hashes, _) in _lock(ROOT / lock).items():
        assert hashes, f"{lock}: {name} has no hash, so `pip install --require-hashes` refuses it"
        expected = development[name][0]
        assert expected == version, f"{lock} pins {name}=={version}, requirements.lock {expected}"


def _declared(requirements: list[str]) -> dict[str, SpecifierSet]:
    """Distribution -> the versions a declaration allows (a `lanes[...]` self-reference is left out)."""
    found = {}
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name != "lanes":
            found[_normal(requirement.name)] = requirement.specifier
    return found


def _declarations() -> dict[str, dict[str, SpecifierSet]]:
    """Lock file -> what the declarations it is written from allow, by distribution."""
    shared = tomllib.loads((ROOT / "shared/pyproject.toml").read_text())["project"]
    declared = {
        "requirements.lock": _declared(
            shared["dependencies"]
            + [r for extra in shared["optional-dependencies"].values() for r in extra]
            + tomllib.loads((ROOT / "client/pyproject.toml").read_text())["project"]["dependencies"]
            + [r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]]
        )
    }
    for function in FUNCTIONS:
        extras, requirements = {function}, list(shared["dependencies"])
        while extras:
            for requirement in shared["optional-dependencies"][extras.pop()]:
                if requirement.startswith("lanes["):
                    extras |= set(requirement[len("lanes[") : -1].split(","))
                else:
                    requirements.append(requirement)
        declared[f"functions/{function}/requirements.lock"] = _declared(requirements)
    return declared


def test_the_locks_hold_versions_the_declarations_allow() -> None:
    # `make lock` after a change to a declaration; a stale lock fails here, not in an image build.
    for lock, allowed in _declarations().items():
        locked = {name: entry[0] for name, entry in _lock(ROOT / lock).items()}
        for name, specifier in allowed.items():
            assert name in locked, f"{lock} does not install {name}: make lock"
            assert locked[name] in specifier, f"{lock} has {name}=={locked[name]}, declared {specifier}: make lock"


def test_the_shared_package_declares_ranges_so_an_upgrade_can_move_them() -> None:
    # The locks pin; shared/pyproject.toml says which versions work, from the tested one up
    # to (not including) the next major release, or the next minor one of a 0.x project.
    for lock, allowed in _declarations().items():
        if lock == "requirements.lock":
            continue
        locked = {name: entry[0] for name, entry in _lock(ROOT / lock).items()}
        for name, specifier in allowed.items():
            bounds = {spec.operator: Version(spec.version) for spec in specifier}
            assert set(bounds) == {">=", "<"}, f"{name}: {specifier} is not a range"
            low, high = bounds[">="], bounds["<"]
            assert low <= Version(locked[name]) < high
            assert high == (Version(f"0.{low.minor + 1}") if low.major == 0 else Version(f"{low.major + 1}")), name


@pytest.mark.parametrize("function", FUNCTIONS)
def test_dockerfile_installs_from_the_lock_and_keeps_no_build_files(function: str) -> None:
    dockerfile = (ROOT / load().function(function).source / "Dockerfile").read_text()
    assert f"source=functions/{function}/requirements.lock" in dockerfile
    assert dockerfile.count("pip install --require-hashes -r") == 2  # the build stage's setuptools, the function's lock
    # shared/ and the locks are mounted for the steps that read them, never copied into a layer.
    copies = [line for line in dockerfile.splitlines() if line.startswith(("COPY", "ADD"))]
    assert all(re.fullmatch(rf"COPY( functions/{function}/[\w.]+\.py)+ \./", line) for line in copies), copies
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim", dockerfile, re.M)
    assert base and (int(base[1]), int(base[2])) >= (3, 13), "the image's Python gets bug fixes"


def test_dockerignore_sends_only_what_the_images_read() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") + 1 :].count("!shared/") == 1
    assert "shared/*.egg-info" in lines


# -- each image's install step, without a container engine ---------------------------

UV = ROOT / ".venv" / "bin" / "uv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def token_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = tmp_path_factory.mktemp("keys")
    key = Ed25519PrivateKey.generate()
    private = folder / "jwt-private.pem"
    public = folder / "jwt-public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {"JWT_PUBLIC_KEY_FILE": str(public), "JWT_PRIVATE_KEY_FILE": str(private)}


@pytest.fixture(scope="module")
def lanes_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shared/ as the wheel the images' first stage builds (pip wheel --no-deps
    --no-build-isolation, with the setuptools of requirements-build.lock), from a copy so
    that no build files land in the work tree."""
    source = tmp_path_factory.mktemp("shared") / "shared"
    shutil.copytree(ROOT / "shared", source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(wheels), str(source)),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("lanes-*.whl")
    return wheel


@pytest.mark.skipif(not UV.is_file(), reason="uv is installed by make setup")
@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_functions_lock_alone_installs_with_hashes_and_serves(
    function: str, tmp_path: Path, token_keys: dict[str, str], lanes_wheel: Path
) -> None:
    """What the image's install steps do, in a fresh virtualenv: the function's lock with
    --require-hashes (uv, from its cache after the first run), then the lanes wheel with
    --no-deps --no-index, and nothing else. The function then starts as its image's CMD
    starts it and answers its liveness probe: /healthz for an HTTP function, the worker's
    /metrics. The database and the broker are absent (a closed port): liveness must not need them."""
    spec = load().function(function)
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([UV, "venv", "--quiet", "--python", base, venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [UV, "pip", "install", "--quiet", "--python", python]
    subprocess.run(
        [*install, "--require-hashes", "-r", ROOT / spec.source / "requirements.lock"], check=True, timeout=600
    )
    subprocess.run([*install, "--no-deps", "--no-index", lanes_wheel], check=True, timeout=120)
    port = _free_port()
    closed = _free_port()  # nothing listens there
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATA_DIR": str(tmp_path / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "MONGO_URI": f"mongodb://127.0.0.1:{closed}/lanes",
        "RABBITMQ_URL": f"amqp://lanes:lanes@127.0.0.1:{closed}/%2F",
        "LOG_LEVEL": "WARNING",
        **token_keys,
    }
    if spec.trigger == "http":
        env |= {"BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"}
        argv = [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket", spec.app]
        path = "/healthz"
    else:
        env["METRICS_PORT"] = str(port)
        argv = [python, *spec.command[1:]]
        path = "/metrics"
    process = subprocess.Popen(
        argv, cwd=ROOT / spec.source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        status, deadline = 0, time.monotonic() + 60
        while status != 200 and process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                    status = response.status
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
        alive = process.poll() is None
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert alive and status == 200, output[-3000:]
    # Nothing from outside the lock: every distribution in the venv is one it names.
    listed = subprocess.run(
        [UV, "pip", "freeze", "--python", python], check=True, capture_output=True, text=True
    ).stdout
    installed = {_normal(re.split(r"==| @ ", line)[0]) for line in listed.splitlines() if line.strip()}
    expected = {*_function_lock(function), "lanes"}
    assert installed == expected, installed ^ expected


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_lock_has_a_hashed_wheel_of_each_package_for_the_images_python(function: str, tmp_path: Path) -> None:
    """The images run CPython 3.14 on Debian 13 (glibc 2.41, x86_64) and have no compiler:
    pip must find, for every package of the function's lock, a wheel for that target whose
    hash the lock holds (--require-hashes), as the image's `pip install` will."""
    dockerfile = (ROOT / load().function(function).source / "Dockerfile").read_text()
    version = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)-slim-trixie", dockerfile, re.M)
    assert version, "the images' base is Debian 13 (trixie), glibc 2.41"
    major, minor = version[1], version[2]
    platforms = [f"manylinux_2_{glibc}_x86_64" for glibc in range(5, 42)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    abis = [f"cp{major}{minor}", "abi3", "none"]
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"),
            *("--only-binary=:all:", "--require-hashes", "--implementation", "cp"),
            *("--python-version", f"{major}.{minor}", "-d", str(tmp_path)),
            *(arg for abi in abis for arg in ("--abi", abi)),
            *(arg for platform in platforms for arg in ("--platform", platform)),
            *("-r", str(ROOT / load().function(function).source / "requirements.lock")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = {_normal(path.name.split("-")[0]) for path in tmp_path.glob("*.whl")}
    assert wheels and wheels <= set(_function_lock(function))
