"""Running a stage from the command line: logging, clear errors, params logging, the shared flags.

``python -m stages.<package>.<stage> ...`` ends in :func:`run_main`, which turns a :class:`StageError` into one
line and exit code 1 (no traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.core import params as _params
from stages.core.io import StageError, atomic_outputs, write_json

log = logging.getLogger("steep")


# --- running a stage ----------------------------------------------------------


def setup_logging() -> None:
    """Plain, timestamp-free log lines on stderr (they end up in DVC's output)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr, force=True)
    # Libraries that chat at INFO on import or first use.
    for noisy in ("presidio-analyzer", "sentence_transformers", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes (imported by transformers) warns on import that its optional 4-bit CPU kernel
    # package is missing; steep never runs 4-bit kernels on CPU.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def run_main(fn: Callable[[], None]) -> None:
    """Run a stage's main: a StageError becomes one clear message and exit code 1, no traceback."""
    setup_logging()
    try:
        fn()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def log_params(name: str, params: Any) -> None:
    """Log the resolved params a stage runs with (a pydantic model or a plain value)."""
    dump = params.model_dump() if hasattr(params, "model_dump") else params
    log.info("%s params: %s", name, json.dumps(dump, sort_keys=True, default=str))


def filter_stage_main(stage: str, keys: list[str], run: Callable[..., dict[str, Any]], in_help: str) -> None:
    """Command line shared by the record-filtering stages (moderate, dedup).

    Flags (see their cmd in dvc.yaml): --params, --in, --out (kept records), --rejects (rejected
    records), --metrics, --cache (the embedding cache). Loads and logs the params the stage declares,
    calls its ``run`` and writes the metrics atomically.
    """
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    ap.add_argument("--in", dest="inp", required=True, type=Path, help=in_help)
    ap.add_argument("--out", required=True, type=Path, help="kept records (parquet)")
    ap.add_argument("--rejects", required=True, type=Path, help="rejected records (parquet)")
    ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    ap.add_argument("--cache", required=True, type=Path, help="embedding cache directory")
    args = ap.parse_args()
    params = _params.load(args.params, keys)
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = getattr(value, part)
        log_params(key, value)
    outputs = {"out": args.out, "rejects": args.rejects}
    metrics = run(params, inputs={"in": args.inp}, outputs=outputs, cache_dir=args.cache)
    with atomic_outputs(args.metrics) as (tmp,):
        write_json(tmp, metrics)
