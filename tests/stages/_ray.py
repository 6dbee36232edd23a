"""A real two-node Ray cluster on this machine for the executor test, and the stages run against it.

``python -m tests.stages._ray WORKDIR`` starts a head node and a second node (``ray start``, one CPU each,
no dashboard, a small object store, its own temp dir), runs moderate and then dedup through their command
line (``cli.main`` -> ``run``) with ``WORKDIR/params.yaml`` (whose ``common.executor`` names the cluster by
``{address}``, filled in here) and small batches (so the work is several tasks), then ends the nodes' processes.

The test runs this inside ``unshare -rn --fork --pid --mount-proc`` where the kernel allows it: a network
namespace whose only interface is loopback (brought up here), so Ray cannot reach any network and its nodes
bind 127.0.0.1 (outside such a namespace Ray swaps 127.0.0.1 for the machine's own address), and a process
namespace that the kernel empties when this script exits, whatever happens to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

SANDBOX = ["unshare", "-rn", "--fork", "--pid", "--mount-proc"]
RAY = str(Path(sys.executable).parent / "ray")
BATCH = 8  # records per task: a few tasks for the inline records of the test


def sandbox_prefix() -> list[str]:
    """``unshare ...`` when this machine allows a private network and process namespace (and has ``ip``)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    probe = subprocess.run([*SANDBOX, "ip", "link", "set", "lo", "up"], capture_output=True, check=False)
    return SANDBOX if probe.returncode == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(temp_dir: str) -> str:
    """Start the head and a second node on 127.0.0.1; return the head's address."""
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
    subprocess.run([*head, *common], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        [RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, env=env, stdout=subprocess.DEVNULL
    )
    return f"127.0.0.1:{port}"


def stop(temp_dir: str) -> None:
    """End the processes of this cluster only, by id: those naming its temp dir, and their children."""
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or [])]
    procs = {c.pid: c for r in roots for c in (r, *r.children(recursive=True))}
    for p in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for p in alive:
        p.kill()


def main(workdir: Path) -> None:
    from stages.core import cli
    from stages.curate import dedup, moderate

    if os.getpid() == 1:  # inside the sandbox: its loopback starts down
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    moderate.RULES_BATCH_RECORDS = dedup.SIGNATURE_BATCH_RECORDS = BATCH
    temp_dir = tempfile.mkdtemp(prefix="steep-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    try:
        address = start(temp_dir)
        params = workdir / "params.yaml"
        params.write_text(params.read_text(encoding="utf-8").replace("{address}", address), encoding="utf-8")
        cli.setup_logging()
        d = workdir / "ray"
        for stage, inp, out, name in (
            (moderate, workdir / "pulled", d / "moderated.parquet", "moderate"),
            (dedup, d / "moderated.parquet", d / "curated.parquet", "dedup"),
        ):
            paths = {"in": inp, "out": out, "rejects": d / f"rejected_{name}.parquet", "metrics": d / f"{name}.json"}
            args = ["--params", str(params), "--cache", str(workdir / "cache")]
            stage.main([*args, *(a for flag, path in paths.items() for a in (f"--{flag}", str(path)))])
    finally:
        stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
