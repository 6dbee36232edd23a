"""What a run ran with: Python, the installed libraries (against the lock file), the CPU kernels and the device.

Each stage merges its record into ``environment.json`` beside its metrics file (``metrics/environment.json``),
keyed by the metrics file's name (``train_chat``). DVC does not hash that file (no stage declares it), so a
different library or CPU never reruns anything; ``steep audit`` reads it on both sides of an audit, so that "a
different library" is told apart from "a different result". The library versions are stored once per distinct set
(``packages``, keyed by the set's sha256) and each stage names its set.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from stages.core.io import atomic_outputs, write_json

LOCK_FILE = "requirements.lock"  # at the project root: every dependency pinned, with hashes (README: Install)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503: lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every installed distribution -> its version, sorted by canonical name; where two copies are on the path, the
    first one (the one ``import`` finds, e.g. one on PYTHONPATH before site-packages)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"]:
            found.setdefault(canonical(dist.metadata["Name"]), dist.version)
    return dict(sorted(found.items()))


def locked(lock: Path) -> dict[str, str]:
    """The pins of a lock file (``name==version`` lines; hashes and comments skipped), by canonical name."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return dict(sorted(pins.items()))


def off_lock(packages: dict[str, str], pins: dict[str, str]) -> dict[str, str]:
    """The locked packages whose installed version differs: name -> "installed X, locked Y" (missing: "none")."""
    return {
        name: f"installed {packages.get(name, 'none')}, locked {version}"
        for name, version in pins.items()
        if packages.get(name) != version
    }


def _torch() -> dict[str, str]:
    """The CPU kernel set and device of torch, where this process imported it (nothing else imports it for this)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "not used"), "device": "cpu"}
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": device}


def record(root: Path = Path(".")) -> tuple[dict[str, Any], dict[str, str]]:
    """This process's environment (without the package list) and its package list."""
    packages = installed()
    lock = root / LOCK_FILE
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        **_torch(),
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none",
        "off_lock": off_lock(packages, locked(lock)) if lock.is_file() else {},
    }
    return env, packages


def packages_key(packages: dict[str, str]) -> str:
    """A short key of a package set (its sorted JSON's sha256, 16 hex digits)."""
    return hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()[:16]


def write(path: Path, name: str, root: Path = Path(".")) -> None:
    """Merge this process's record as entry `name` of the environment file `path` (written atomically).

    Package sets no stage names any more are dropped, so the file holds what the last run of each stage used.
    """
    env, packages = record(root)
    data: dict[str, Any] = {"stages": {}, "packages": {}}
    if path.is_file():
        # a damaged record is replaced, not merged: it only describes, nothing reads it as input
        with contextlib.suppress(ValueError):
            data = json.loads(path.read_text(encoding="utf-8"))
    key = packages_key(packages)
    data.setdefault("stages", {})[name] = {**env, "packages": key}
    sets = data.setdefault("packages", {})
    sets[key] = packages
    used = {s["packages"] for s in data["stages"].values()}
    data["packages"] = {k: v for k, v in sorted(sets.items()) if k in used}
    data["stages"] = dict(sorted(data["stages"].items()))
    with atomic_outputs(path) as (tmp,):
        write_json(tmp, data)


def stage_packages(data: dict[str, Any], name: str) -> dict[str, str]:
    """The package versions the stage `name` of an environment record ran with ({} when absent)."""
    entry = data.get("stages", {}).get(name)
    return data.get("packages", {}).get(entry["packages"], {}) if entry else {}
