"""Resume after a kill: the train stage killed (SIGKILL) at three points, or stopped by a full disk mid-save, then
rerun, gives the uninterrupted run's adapter bit for bit (CPU, one process).

The real stage command runs as a subprocess on the tiny Llama of ``test_train`` and is killed when a file appears
that marks the point (a dvclive row, a checkpoint's files, its completeness record): no hook in the stage. The kills
come one after another on the same checkpoints (each rerun resumes what the last one left), and the last rerun
runs in this process (``train.run``, as the command calls it), so that the slow start of a Python process with
torch and transformers comes 3 times, not 6. Each run: 6 steps, evaluated and saved every 2, LoRA dropout on (the
resumed RNG state matters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stages.core import params as core_params
from stages.variant import train, training
from tests.stages._tiny import tiny_llama, word_tokenizer
from tests.stages.test_train import ROOT, SPEC, VOCAB, _cmd, _env, _params, _rows

RESUME = {
    "max_steps": 6,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "save_every_steps": 2,
    "early_stopping_patience": 0,
    "max_checkpoints": 2,
    "lora_dropout": 0.05,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model and data of test_train (67 train / 8 validation rows of 16 tokens)."""
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("tiny_resume")
    tiny_llama(root / "model", word_tokenizer(VOCAB), max_positions=64)
    DatasetDict({"train": _rows(range(0, 200, 3)), "validation": _rows(range(1, 200, 25))}).save_to_disk(
        str(root / "data")
    )
    return {"model": root / "model", "data": root / "data"}


def _run(tiny: dict[str, Path], out: Path, ckpt: Path) -> dict[str, Any]:
    """The stage in this process, as its command runs it (common.seed of params.yaml: 1234)."""
    spec = train.TrainSpec.model_validate({**SPEC, **RESUME})
    return train.run(
        core_params.of({"common.seed": 1234, "train.chat": spec}),
        variant="chat",
        inputs={"model": tiny["model"], "data": tiny["data"]},
        outputs={"out": out / "adapter", "live": out / "live"},
        checkpoints=ckpt,
    )


def _start(tiny: dict[str, Path], out: Path, ckpt: Path) -> subprocess.Popen:
    """The stage's command in a subprocess, its stderr into ``out/stderr.txt``."""
    cmd = _cmd(tiny, _params(out / "params.yaml", **RESUME), out)
    cmd[cmd.index("--checkpoints") + 1] = str(ckpt)
    err = (out / "stderr.txt").open("w")
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)


def _wait_for(proc: subprocess.Popen, point: Callable[[], bool]) -> None:
    """Wait (polling every millisecond) until `point()` holds while `proc` runs."""
    deadline = time.monotonic() + 200
    while not point():
        assert proc.poll() is None, "the run ended before the kill point: " + _stderr(proc)
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.001)


def _stderr(proc: subprocess.Popen) -> str:
    return Path(proc.args[proc.args.index("--out") + 1]).parent.joinpath("stderr.txt").read_text()[-3000:]


def _md5(out: Path) -> str:
    return hashlib.md5((out / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()


def _losses(out: Path) -> list[str]:
    """The dvclive rows of the train loss: ``step<TAB>loss`` (history replayed on a resume, then the rest)."""
    return (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]


@pytest.fixture(scope="module")
def uninterrupted(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The adapter md5, metrics and per-step train losses of a run that nothing interrupts."""
    out = tmp_path_factory.mktemp("uninterrupted")
    metrics = _run(tiny, out, out / "ckpt")
    assert metrics["resumed_from_step"] is None and not metrics["resumed"] and metrics["steps"] == 6
    return {"md5": _md5(out), "metrics": metrics, "losses": _losses(out)}


# --- the kill points ------------------------------------------------------------


def _logged(out: Path, step: int) -> Callable[[], bool]:
    """dvclive has the train loss of `step`: the run is in the next step, no checkpoint being written."""

    def point() -> bool:
        f = out / "live" / "plots" / "metrics" / "train" / "loss.tsv"
        return f.is_file() and any(line.startswith(f"{step}\t") for line in f.read_text().splitlines())

    return point


def _hold_save(ckpt: Path, step: int) -> Callable[[], bool]:
    """Make the save of checkpoint-`step` stop before its trainer_state.json (a named pipe there: opening it blocks
    until a reader comes), where the model, optimizer, scheduler and RNG files are written; the point: they are."""
    folder = ckpt / f"checkpoint-{step}"
    folder.mkdir()
    os.mkfifo(folder / "trainer_state.json")
    return lambda: (folder / "rng_state.pth").is_file()


def _saved(ckpt: Path, step: int) -> Callable[[], bool]:
    """checkpoint-`step` is complete: its completeness record is in place."""
    return lambda: (ckpt / f"checkpoint-{step}" / training.COMPLETE).is_file()


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_sigkill_at_three_points_then_rerun_gives_the_uninterrupted_adapter(
    tiny: dict[str, Path], uninterrupted: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One run killed three times, each rerun resuming what the kill left:

    | kill                  | when                                        | the rerun resumes from         |
    | mid-step              | step 4 runs (step 3 logged)                 | checkpoint-2                   |
    | mid-checkpoint-write  | checkpoint-4 has all but trainer_state.json | checkpoint-2 (4 skipped)       |
    | right after a save    | checkpoint-4 is complete                    | checkpoint-4, to the end       |
    """
    ckpt = tmp_path / "ckpt"
    kills: list[tuple[str, Callable[[], Callable[[], bool]], int | None, int | None]] = [
        # (name, the point (made once the run has started), resumed from, checkpoint skipped as incomplete)
        ("mid_step", lambda: _logged(tmp_path, 3), None, None),
        ("mid_checkpoint_write", lambda: _hold_save(ckpt, 4), 2, None),
        ("right_after_checkpoint", lambda: _saved(ckpt, 4), 2, 4),
    ]
    for name, make_point, resumed_from, skipped in kills:
        shutil.rmtree(tmp_path / "live", ignore_errors=True)  # the points read the new run's dvclive rows
        proc = _start(tiny, tmp_path, ckpt)
        if name == "mid_checkpoint_write":  # the run must be past its checkpoint cleanup before the pipe goes in
            _wait_for(proc, _logged(tmp_path, 3))
        _wait_for(proc, make_point())
        _kill(proc)
        err = _stderr(proc)
        assert not (tmp_path / "adapter").exists(), name
        resumed = f"resuming from {ckpt / f'checkpoint-{resumed_from}'} (step {resumed_from})"
        assert (resumed if resumed_from else "starting from step 0") in err, (name, err)
        if skipped is not None:
            assert f"checkpoint {ckpt / f'checkpoint-{skipped}'} is incomplete" in err, (name, err)
        if name == "mid_checkpoint_write":
            assert training.incomplete(ckpt / "checkpoint-4").startswith("no readable"), name
            assert training.latest_checkpoint(ckpt) == ckpt / "checkpoint-2"

    with caplog.at_level(logging.INFO, logger="steep.train"):
        m = _run(tiny, tmp_path, ckpt)
    assert f"resuming from {ckpt / 'checkpoint-4'} (step 4)" in caplog.text
    assert m["resumed"] and m["resumed_from_step"] == 4 and m["steps"] == 6
    assert _md5(tmp_path) == uninterrupted["md5"]
    # every logged loss as the uninterrupted run logged it, once, in order
    assert _losses(tmp_path) == uninterrupted["losses"]
    for key in ("eval_loss", "first_eval_loss", "best_step", "train_loss"):
        assert m[key] == uninterrupted["metrics"][key], key
    assert json.loads((tmp_path / "adapter" / training.ADAPTER_RECORD).read_text())["deterministic"] is True
    assert not ckpt.exists()


# --- a full disk ------------------------------------------------------------------


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `where`; the reason it cannot be done, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    where.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        return done.stderr.decode().strip() or f"mount exited {done.returncode}"
    return None


def test_checkpoint_cut_by_a_full_disk_is_skipped(
    tiny: dict[str, Path], uninterrupted: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """checkpoint-4's save runs out of disk (a tmpfs, filled once checkpoint-2 is complete); the run stops with an
    error. With space again, the rerun skips checkpoint-4 with a warning, resumes from checkpoint-2 and gives the
    uninterrupted adapter."""
    disk = tmp_path / "disk"
    why = _mount_tmpfs(disk, "32m")
    if why:
        pytest.skip(f"no tmpfs for a full disk: {why}")
    ckpt = disk / "ckpt"
    try:
        proc = _start(tiny, tmp_path, ckpt)
        _wait_for(proc, _saved(ckpt, 2))
        proc.send_signal(signal.SIGSTOP)  # fill the disk before checkpoint-4's save begins
        size = sum(f.stat().st_size for f in (ckpt / "checkpoint-2").rglob("*") if f.is_file())
        filler = disk / "filler"
        with filler.open("wb") as fh:  # leave a third of a checkpoint free: the next save is cut midway
            fh.write(b"\0" * (_free_bytes(disk) - size // 3))
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=200) != 0
        assert "no space left on the device" in _stderr(proc)
        assert (ckpt / "checkpoint-4").is_dir() and training.incomplete(ckpt / "checkpoint-4")

        filler.unlink()  # space again
        with caplog.at_level(logging.INFO, logger="steep.train"):
            m = _run(tiny, tmp_path, ckpt)
        assert f"checkpoint {ckpt / 'checkpoint-4'} is incomplete" in caplog.text
        assert f"resuming from {ckpt / 'checkpoint-2'} (step 2)" in caplog.text
        assert m["resumed_from_step"] == 2 and _md5(tmp_path) == uninterrupted["md5"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_damaged_checkpoint_files_are_not_resumed(tmp_path: Path) -> None:
    """The completeness record is checked file by file: a file cut, changed or missing after the save makes the
    checkpoint incomplete, and the next older complete one is chosen (the damaged one removed)."""
    ckpt = tmp_path / "ckpt"
    for step in (2, 4):
        d = ckpt / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        (d / "optimizer.pt").write_bytes(b"x" * 5000)
        training.mark_complete(d)
    assert training.incomplete(ckpt / "checkpoint-4") is None
    assert training.latest_checkpoint(ckpt) == ckpt / "checkpoint-4"
    cases: list[tuple[Callable[[Path], None], str]] = [
        (lambda d: (d / "trainer_state.json").write_text('{"global_step": 4, "log_hi'), "trainer_state.json is not"),
        (lambda d: (d / "optimizer.pt").write_bytes(b"y" * 5000), "optimizer.pt is not the file the save wrote"),
        (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda d: (d / training.COMPLETE).unlink(), f"no readable {training.COMPLETE}"),
        (lambda d: (d / training.COMPLETE).write_text("{"), f"no readable {training.COMPLETE}"),
    ]
    for damage, reason in cases:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ckpt, work)
        damage(work / "checkpoint-4")
        assert reason in (training.incomplete(work / "checkpoint-4") or ""), reason
        assert training.latest_checkpoint(work, remove=True) == work / "checkpoint-2"
        assert not (work / "checkpoint-4").exists()
