"""Faults of the machine, one table per family: each ends in a sentence naming the path and the fix, never a traceback,
and leaves no temporary file behind (or has it removed at the next start).

The cases run the real pull stage (``python -m stages.curate.pull``, dvc.yaml's command) on a small source, in a
folder made for each test: a read-only file system and a full disk are small tmpfs mounts made by the test (root
only: skipped with the reason otherwise), a missing permission is the stage run as the user ``nobody``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.core import cli
from stages.core.io import StageError

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


@pytest.fixture
def work() -> Iterator[Path]:
    """A project folder others may read (the `nobody` case runs the stage as another user): params and a source."""
    path = Path(tempfile.mkdtemp(prefix="steep-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
        for mount in sorted(path.glob("*/"), reverse=True):  # a mount the test could not undo would block rmtree
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(path)], check=False)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` with `options` (``size=64k``, ``ro``); skips the test where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a read-only or a full file system) needs root; this test runs as a user")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path} ({done.stderr.strip()}): no mount permission in this container")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def write_source(work: Path, rows: int, chars: int = 40) -> None:
    """An Alpaca JSONL source of `rows` records whose outputs are `chars` random letters (they do not compress)."""
    rng = random.Random(0)
    with (work / "a.jsonl").open("w", encoding="utf-8") as fh:
        for n in range(rows):
            text = "".join(rng.choices(string.ascii_letters, k=chars))
            fh.write(json.dumps({"instruction": f"Say item {n}.", "input": "", "output": text}) + "\n")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["pull"]["sources"] = [{"name": "a", "format": "alpaca", "location": "a.jsonl"}]
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    for path in (work / "a.jsonl", work / "params.yaml"):
        path.chmod(0o644)


def pull(work: Path, out: str, user: int | None = None, wait: bool = True) -> Any:
    """Run the pull stage in `work` writing `out` (and metrics/pull.json); as `user` if given."""
    cmd = [sys.executable, "-m", "stages.curate.pull", "--params", "params.yaml", "--out", out]
    cmd += ["--metrics", "metrics/pull.json"]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def temporaries(folder: Path) -> list[str]:
    """The temporary names left in `folder` (io's ``.<name>.tmp-<pid>...`` shape)."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name) if folder.is_dir() else []


# --- a full disk, a read-only folder, a missing permission: one sentence each ----------------------------------------


@contextlib.contextmanager
def _read_only(work: Path) -> Iterator[tuple[str, str]]:
    with tmpfs(work / "ro", "ro,size=1m"):
        yield (
            "ro/pulled",
            "ro: the file system is read-only. Fix: the stage writes its outputs and caches there: run it",
        )


@contextlib.contextmanager
def _full_disk(work: Path) -> Iterator[tuple[str, str]]:
    write_source(work, rows=6000, chars=200)  # ~1.2 MB of letters that do not compress, on 256 KiB
    with tmpfs(work / "full", "size=256k"):
        yield "full/pulled", "no space left on the device (the disk is full). Fix: free space on the file system that"


@contextlib.contextmanager
def _no_permission(work: Path) -> Iterator[tuple[str, str]]:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed: the stage cannot run as another user")
    (work / "locked").mkdir(mode=0o755)  # root's: `nobody` may read it, not write in it
    (work / "metrics").mkdir(mode=0o777)
    yield "locked/pulled", "locked: permission denied. Fix: let the user running the stage read and write there"


@pytest.mark.parametrize(
    ("case", "make", "user"),
    [("read-only output folder", _read_only, None), ("full disk", _full_disk, None),
     ("missing permission", _no_permission, NOBODY)],
)  # fmt: skip
def test_faults_end_in_a_sentence_naming_the_path_and_the_fix(work: Path, case: str, make: Any, user: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{case}: a tmpfs mount or another user needs root; this test runs as a user")
    write_source(work, rows=3)
    with make(work) as (out, expected):
        done = pull(work, out, user=user)
        assert done.returncode == 1, (case, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and expected in error[0], (case, done.stderr[-2000:])
        assert str(Path(out).parent) in error[0]
        # nothing half-written, no temporary left
        assert not (work / out).exists() and temporaries(work / Path(out).parent) == []
        assert not (work / "metrics" / "pull.json").exists()


def _sqlite(folder: Path) -> None:
    db = sqlite3.connect(folder / "entries.sqlite")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    try:
        for n in range(1000):
            db.execute("INSERT INTO t VALUES (?, ?)", (str(n), os.urandom(4096)))
            db.commit()
    finally:
        db.close()


def _safetensors(folder: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ones((1024, 256), dtype=np.float32)}, str(folder / "vectors.safetensors"))


@pytest.mark.parametrize("write", [_sqlite, _safetensors], ids=["sqlite", "safetensors"])
def test_a_full_disk_under_a_cache_names_it(work: Path, write: Any) -> None:
    """sqlite ("database or disk is full") and safetensors (a Rust I/O error) raise no OSError: still the path (from
    the stage's list) and the fix."""
    with tmpfs(work / "cache", "size=64k"), pytest.raises(StageError) as err, cli.faults([work / "cache"]):
        write(work / "cache")
    assert str(err.value).startswith(f"one of {work / 'cache'}: no space left on the device (the disk is full). Fix:")


# --- temporary files of killed runs: removed at the next start --------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_killed_pull_leaves_a_temporary_folder_the_next_run_removes(work: Path) -> None:
    write_source(work, rows=200_000)
    proc = pull(work, "data/pulled", wait=False)
    deadline = time.monotonic() + 120
    while not temporaries(work / "data") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    left = temporaries(work / "data")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert left == [f".pulled.tmp-{proc.pid}"], left  # the killed run's folder stays...
    assert temporaries(work / "data") == left and not (work / "data" / "pulled").exists()
    write_source(work, rows=3)
    done = pull(work, "data/pulled")
    assert done.returncode == 0, done.stderr[-2000:]
    assert temporaries(work / "data") == []  # ...until the next run starts
    assert f"data/.pulled.tmp-{proc.pid}: removed, left by a killed run (process {proc.pid})" in done.stderr
    assert json.loads((work / "metrics" / "pull.json").read_text())["total"] == 3


def test_the_temporaries_of_dead_processes_are_removed_at_start_and_the_live_ones_kept(work: Path) -> None:
    """Beside the outputs and in the caches (and their subfolders, like the static tables' folder): every shape."""
    dead, live = _dead_pid(), os.getppid()
    data, static = work / "data", work / "cache" / "static"
    stale = [
        data / f".pulled.tmp-{dead}",  # a pull killed before its rename
        data / f"..moderated.parquet.tmp-{dead}.runs.tmp-{dead}.k2j",  # sorted runs of a killed writer
        data / f".moderate.tmp-{dead}.x81",  # moderate's spool
        static / f".0f3a.tmp-{dead}.q1w",  # a table half-distilled when the disk filled
        work / "cache" / f".entries.json.tmp-{dead}",  # a cache entry cut short
    ]
    kept = [data / f".pulled.tmp-{live}", static / "0f3a", data / "notes.tmp-1", static / f"x.tmp-{dead}"]
    for path in stale + kept:
        path.mkdir(parents=True)
        (path / "f").write_text("x")
    ran: list[Path] = []

    def run(params: Any, *, inputs: Any, outputs: dict[str, Path], cache: Path) -> dict[str, int]:
        ran.extend(sorted(p for p in [*data.iterdir(), *cache.iterdir(), *static.iterdir()]))
        return {"total": 0}

    stage = cli.Stage(params=(), inputs={}, outputs={"out": "the output"}, options={"cache": "the cache"})
    cli.main(stage, run, ["--out", str(data / "pulled"), "--cache", str(work / "cache"), "--metrics",
                          str(work / "m.json")])  # fmt: skip
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept)
    assert not set(stale) & set(ran)  # removed before the stage's work began
