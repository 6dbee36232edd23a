"""The one command line of every stage, made from what the stage declares.

A stage module declares a :class:`Stage` (its params keys, and the paths it reads and writes, each a flag of
its ``cmd`` in dvc.yaml) and a ``run(params, *, inputs, outputs, ...)`` returning its metrics; its ``main`` is
``cli.main(STAGE, run)``, which parses the flags, loads and logs the declared params, calls ``run`` and writes
the metrics atomically. A :class:`StageError` becomes one line and exit code 1 (no traceback), and so do a full
disk, a read-only folder and a missing permission (:func:`fault`: the path and what to do). What killed runs left
beside the outputs and in the caches (temporary files and folders) is removed before the stage starts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core import environment as _environment
from stages.core import params as _params
from stages.core.io import StageError, atomic_outputs, clean_stale, write_json

log = logging.getLogger("steep")
VARIANT = "${key}"  # in a per-variant stage's params keys: the variant (dvc.yaml's foreach key)


@dataclass(frozen=True)
class Stage:
    """What a stage reads and writes, as its command line and dvc.yaml name it.

    Attributes:
        params: the params.yaml keys the stage reads (its ``params:`` in dvc.yaml); ``${key}`` stands for the
            variant in a per-variant stage, which then takes ``--variant``.
        inputs: input name -> help; each is a flag ``--<name>`` (``_`` as ``-``) and a key of ``run``'s
            ``inputs``.
        outputs: the same for outputs (``run``'s ``outputs``).
        options: further directories ``run`` takes by keyword (caches, checkpoints): name -> help.
        many: the inputs that take one path or more.
        metrics: whether the stage writes ``--metrics`` (a JSON of what ``run`` returns).
        local_paths: given the params, the variant and the inputs, the local files and folders the params name
            (model sources, task files, a variant's files), as ``(path, what names it)``: each must be a
            dependency of the stage in dvc.yaml (:func:`check_deps`).
    """

    params: tuple[str, ...]
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    options: Mapping[str, str] = field(default_factory=dict)
    many: tuple[str, ...] = ()
    metrics: bool = True
    local_paths: Callable[[_params.Scoped, str | None, Mapping[str, Path]], list[tuple[str, str]]] | None = None

    @property
    def per_variant(self) -> bool:
        """Whether the stage runs once per variant (``--variant``; dvc.yaml's ``foreach: ${variants}``)."""
        return any(VARIANT in key for key in self.params)

    def keys(self, variant: str | None) -> list[str]:
        """The params keys for `variant` (``${key}`` filled in)."""
        if self.per_variant and variant is None:
            raise ValueError("a per-variant stage needs its variant")
        return [key.replace(VARIANT, variant or "") for key in self.params]


def parse(stage: Stage, prog: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `stage`: --params (if it reads any), --variant (per variant), its paths and --metrics."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    if stage.params:
        ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    if stage.per_variant:
        ap.add_argument("--variant", required=True, help="the variant (a key of `variants` in params.yaml)")
    for group in (stage.inputs, stage.outputs, stage.options):
        for name, help_ in group.items():
            nargs = "+" if name in stage.many else None
            ap.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, type=Path, nargs=nargs, help=help_)
    if stage.metrics:
        ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    return ap.parse_args(argv)


def check_deps(
    paths: list[tuple[str, str]], module: str, variant: str | None, dvc_yaml: Path = Path("dvc.yaml")
) -> None:
    """Refuse a local path the params name that the stage's entry in dvc.yaml does not depend on.

    Without the dependency an edit to that file would rerun nothing. Skipped where no dvc.yaml (or no
    stage of it running `module`) is in the working directory: the stage was run by hand, not by DVC; a path
    that does not exist is left to the stage, whose error says where it looked.
    """
    import yaml

    if not paths or not dvc_yaml.is_file():
        return
    entries = []
    for name, stage in (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {}).items():
        body = stage.get("do", stage)
        if f"python -m {module} " in f"{body.get('cmd', '')} ":
            deps = [next(iter(d)) if isinstance(d, dict) else d for d in body.get("deps", [])]
            label = f"{name}@{variant}" if "do" in stage and variant else name
            entries.append((label, [Path(d.replace(VARIANT, variant or "")) for d in deps]))
    for label, deps in entries:
        for path, what in paths:
            p = Path(path)
            if not p.exists():
                continue  # the stage itself says it is missing, and where
            if not any(p == d or d in p.parents for d in deps):
                raise StageError(
                    f"{what} names {path}, which dvc.yaml's stage {label!r} does not depend on, so an edit to it "
                    f"would rerun nothing: add `- {path}` to that stage's deps in dvc.yaml (or move it into a "
                    f"folder it depends on: {[str(d) for d in deps if not d.suffix]})"
                )


def main(
    stage: Stage,
    run: Callable[..., Mapping[str, Any] | None],
    argv: list[str] | None = None,
    launch: Callable[[_params.Scoped, argparse.Namespace], bool] | None = None,
) -> None:
    """Run a stage from its command line: parse, load and log the params, call `run`, write the metrics.

    `run` gets the scoped params, ``inputs`` and ``outputs`` (name -> path), each option by keyword, and
    ``variant`` in a per-variant stage; it returns the metrics, or None where this process writes none (a
    non-zero rank of a distributed run). `launch`, if given, is called first and may run the stage itself
    (e.g. relaunch it under torchrun), returning True when it did.
    """
    module = sys.modules.get("__main__")
    prog = f"python -m {module.__spec__.name}" if module and module.__spec__ else "steep stage"
    doc = (module.__doc__ or "").strip().splitlines() if module else []
    args = parse(stage, prog, doc[0] if doc else "", argv)
    variant = getattr(args, "variant", None)
    keys = stage.keys(variant)
    params = _params.load(args.params, keys) if keys else _params.Scoped({}, ())
    inputs = {name: getattr(args, name) for name in stage.inputs}
    if stage.local_paths is not None and module and module.__spec__:
        check_deps(stage.local_paths(params, variant, inputs), module.__spec__.name, variant)
    if launch is not None and launch(params, args):
        return
    for key in keys:
        log_params(key, _params.get(params, key))
    extra: dict[str, Any] = {name: getattr(args, name) for name in stage.options}
    if stage.per_variant:
        extra["variant"] = variant
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' threads beside torch's: a warning
    outputs = {name: getattr(args, name) for name in stage.outputs}
    caches = [extra[name] for name in stage.options]
    written = [*outputs.values(), *([args.metrics] if stage.metrics else []), *caches]
    clean_start(written, caches)
    with faults(written):
        metrics = run(params, inputs=inputs, outputs=outputs, **extra)
    if stage.metrics and metrics is not None:
        with atomic_outputs(args.metrics) as (tmp,):
            write_json(tmp, metrics)
        # what this run ran with, beside the metrics; no stage declares it, so it never reruns anything
        _environment.write(args.metrics.parent / "environment.json", args.metrics.stem)


# --- running a stage ----------------------------------------------------------


def setup_logging() -> None:
    """Plain, timestamp-free log lines on stderr (they end up in DVC's output)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr, force=True)
    # Libraries that chat at INFO on import or first use.
    for noisy in ("sentence_transformers", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes (imported by transformers) warns on import that its optional 4-bit CPU kernel
    # package is missing; steep never runs 4-bit kernels on CPU.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def run_main(fn: Callable[[], None]) -> None:
    """Run a stage's main: a StageError becomes one clear message and exit code 1, no traceback."""
    setup_logging()
    try:
        with faults(()):
            fn()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def clean_start(outputs: Sequence[Path], caches: Sequence[Path]) -> None:
    """Remove what killed runs left beside `outputs` and in the `caches` folders (and their subfolders): the
    temporary names of :func:`stages.core.io.clean_stale`. This process has made none yet, so its pid counts too."""
    folders = {Path(p).parent for p in outputs}
    for cache in caches:
        if cache.is_dir():
            folders |= {cache, *(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))}
    for folder in sorted(folders):
        clean_stale(folder, own=True)


@contextlib.contextmanager
def faults(paths: Sequence[Path]) -> Iterator[None]:
    """Turn a full disk, a read-only folder or a missing permission met inside the block into a StageError
    (:func:`fault`; `paths`: the outputs and caches, named where the error names no file)."""
    try:
        yield
    except StageError:
        raise
    except Exception as e:
        err = fault(e, paths)
        if err is None:
            raise
        raise err from None


def log_params(name: str, params: Any) -> None:
    """Log the resolved params a stage runs with (a pydantic model or a plain value)."""
    if isinstance(params, list | tuple):  # e.g. probe.tasks: sections as plain data, unset optional keys left out
        dump = [p.model_dump(exclude_none=True) if hasattr(p, "model_dump") else p for p in params]
    else:
        dump = params.model_dump() if hasattr(params, "model_dump") else params
    log.info("%s params: %s", name, json.dumps(dump, sort_keys=True, default=str))


# --- faults of the machine: a full disk, a read-only folder, a missing permission --------------------------------

_FAULTS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# libraries that raise no OSError (sqlite3, safetensors, pyarrow's messages) say it in words or as a number
_FAULT_WORDS = (
    ("no space left on device", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("readonly database", errno.EROFS),
    ("permission denied", errno.EACCES),
)
_FAULT_NUMBER = re.compile(r"\[errno (\d+)\]|\(os error (\d+)\)|Os \{ code: (\d+)", re.IGNORECASE)
_QUOTED_PATH = re.compile(r"'([^'\s]*/[^']*)'")


def _fault_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in _FAULTS:
        return exc.errno
    text = str(exc)
    for m in _FAULT_NUMBER.finditer(text):
        code = int(next(g for g in m.groups() if g is not None))
        if code in _FAULTS:
            return code
    if not isinstance(exc, OSError | sqlite3.Error) and "safetensor" not in type(exc).__name__.lower():
        return None  # the words alone, from another library (an HTTP 403, say), are no fault of this machine
    return next((code for words, code in _FAULT_WORDS if words in text.lower()), None)


def fault(exc: BaseException, paths: Sequence[str | Path] = ()) -> StageError | None:
    """The StageError for a full disk, a read-only folder or a missing permission, naming the path and the fix.

    Looks through `exc` and what it was raised from; None for any other failure. The path is the one the error
    names, else `paths` (the outputs and caches of the stage that failed).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = _fault_of(exc)
        if code is not None:
            break
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    else:
        return None
    named = getattr(exc, "filename", None) or next(iter(_QUOTED_PATH.findall(str(exc))), None)
    if named:
        where = Path(named)
        if where.name.startswith(".") and ".tmp-" in where.name:  # an output before its rename: name its folder
            where = where.parent
    else:
        where = Path(paths[0]) if paths else Path(".")
    folder = where if where.is_dir() else where.parent
    shown = f"{where}" if named else "one of " + ", ".join(map(str, paths)) if paths else "a file of the stage"
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            f"free space on the file system that holds it (`df -h {folder}` shows it; `dvc gc -w` removes the old "
            "outputs DVC keeps), then rerun: outputs are renamed into place only when complete, so none is half-written"
        )
    elif code == errno.EROFS:
        fix = (
            "the stage writes its outputs and caches there: run it where they can be written (a writable copy of the "
            "project, or the file system remounted read-write)"
        )
    else:
        fix = (
            f"let the user running the stage read and write there (`ls -ld {folder}` shows the owner and mode; "
            "`chmod u+rw` or `chown` it), or run the stage as its owner"
        )
    return StageError(f"{shown}: {_FAULTS[code]}. Fix: {fix}")
