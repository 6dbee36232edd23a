"""Per-batch work of a stage across local processes or a Ray cluster, with the same result either way.

:func:`map_batches` cuts the items into batches of a fixed size (set by the stage, never by the worker
count), runs a top-level, picklable ``fn(batch) -> list`` on each and returns the results concatenated in
input order, so the output never depends on ``common.workers`` or ``common.executor``:

- ``executor.kind: local``: ``workers`` processes (``common.workers``; 0 means every core, ``os.cpu_count()``)
  of a ``forkserver`` pool; ``workers: 1`` (or a single batch) runs in the stage's own process, no pool. A
  forkserver child starts from a clean single-threaded server that imported the stage's modules once, not
  from a copy of a parent whose torch/tokenizers threads may hold locks (``fork``), nor from a fresh
  interpreter importing everything again (``spawn``). Models a batch function loads lazily (py3langid,
  alt-profanity-check) load once per worker process and stay for its later batches.
- ``executor.kind: ray``: each batch is a Ray task (1 CPU) on the cluster at ``executor.address``
  (``host:port`` of the head's GCS, or ``auto`` for a cluster started on this machine with ``ray start``);
  ``ray.init`` connects to that cluster and never starts one. The ``stages`` package travels with the job
  (``runtime_env.py_modules``), so every node runs this checkout's code; the nodes need the same Python
  environment (the project's dependencies). The connection is closed when the map is done.

Progress: a log line per completed batch (records done, records/s) and a timing line per phase, through the
stage's logger, so they show in DVC's output whether or not it is a terminal. Timings go to logs, never to
metrics (they depend on the machine, not on the data).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from stages.core.params.common import Executor

T = TypeVar("T")
R = TypeVar("R")

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # stages/, shipped to Ray workers


def resolve_workers(workers: int) -> int:
    """``common.workers`` as a process count: 0 means every core of this machine."""
    return workers if workers > 0 else os.cpu_count() or 1


def batches(items: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive slices of `batch_size` (the last may be shorter)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [items[lo : lo + batch_size] for lo in range(0, len(items), batch_size)]


class _Progress:
    """Log lines per completed batch and one timing line per phase."""

    def __init__(self, log: logging.Logger, label: str, total: int, n_batches: int, where: str) -> None:
        self.log, self.label, self.total, self.n_batches = log, label, total, n_batches
        self.done = self.batches_done = 0
        self.start = time.perf_counter()
        # about 20 lines per phase however many batches: a log of a long run stays readable
        self.every = max(1, n_batches // 20)
        log.info("%s: %d records in %d batches on %s", label, total, n_batches, where)

    def advance(self, n: int) -> None:
        self.done += n
        self.batches_done += 1
        if self.batches_done % self.every == 0 and self.batches_done < self.n_batches:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.log.info("%s: %d/%d records (%.0f records/s)", self.label, self.done, self.total, rate)

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.total / max(elapsed, 1e-9)
        self.log.info("%s: %d records in %.2f s (%.0f records/s)", self.label, self.total, elapsed, rate)


def map_batches(
    fn: Callable[[Sequence[T]], Sequence[R]],
    items: Sequence[T],
    *,
    executor: Executor,
    workers: int,
    batch_size: int,
    label: str,
    log: logging.Logger,
) -> list[R]:
    """``fn`` over `items` in batches of `batch_size`; the results concatenated in input order.

    Args:
        fn: a top-level function (or a ``functools.partial`` of one) taking a batch (a slice of `items`) and
            returning one result per item; it must be picklable and pure (its results depend on the batch only).
        items: the inputs (picklable).
        executor: ``common.executor`` (local processes or a Ray cluster).
        workers: ``common.workers`` (local processes; 0: every core); a Ray cluster uses its own CPUs.
        batch_size: items per batch; fixed by the caller, so the batches are the same for any worker count.
        label: the phase's name in log lines.
        log: the stage's logger.

    Returns:
        ``[*fn(batch_0), *fn(batch_1), ...]``.

    Raises:
        ValueError: ``fn`` returned a different number of results than items in its batch.
    """
    parts = batches(items, batch_size)
    results = _run(fn, parts, executor=executor, workers=workers, label=label, log=log)
    out: list[R] = []
    for part, result in zip(parts, results, strict=True):
        if len(result) != len(part):
            raise ValueError(f"{label}: a batch of {len(part)} items gave {len(result)} results")
        out.extend(result)
    return out


def _run(
    fn: Callable[[Sequence[T]], Sequence[R]],
    parts: list[Sequence[T]],
    *,
    executor: Executor,
    workers: int,
    label: str,
    log: logging.Logger,
) -> list[Sequence[R]]:
    """The result of `fn` on each of `parts`, in order."""
    total = sum(len(p) for p in parts)
    if not parts:
        return []
    if executor.kind == "ray":
        return _run_ray(fn, parts, executor.address or "", label, log, total)
    n = min(resolve_workers(workers), len(parts))
    where = f"{n} local process{'es' if n > 1 else ''}" if n > 1 else "the stage's process"
    progress = _Progress(log, label, total, len(parts), where)
    results: list[Sequence[R]] = []
    if n <= 1:
        for part in parts:
            results.append(fn(part))
            progress.advance(len(part))
    else:
        results = list(_run_pool(fn, parts, n, progress))
    progress.finish()
    return results


def _run_pool(
    fn: Callable[[Sequence[T]], Sequence[R]], parts: list[Sequence[T]], n: int, progress: _Progress
) -> Iterator[Sequence[R]]:
    ctx = multiprocessing.get_context("forkserver")
    func = getattr(fn, "func", fn)  # a functools.partial: the module of the function it wraps
    # imported once by the fork server, before its first child (no effect once the server runs)
    ctx.set_forkserver_preload([func.__module__])
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        futures = [pool.submit(fn, part) for part in parts]
        index = {f: i for i, f in enumerate(futures)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                progress.advance(len(parts[index[f]]))
        yield from (f.result() for f in futures)


def _call(fn: Callable[[Any], Any], part: Any) -> Any:
    """A Ray task: `fn` on one batch (module level, so Ray pickles it by reference)."""
    return fn(part)


def _run_ray(
    fn: Callable[[Sequence[T]], Sequence[R]],
    parts: list[Sequence[T]],
    address: str,
    label: str,
    log: logging.Logger,
    total: int,
) -> list[Sequence[R]]:
    import ray

    ray.init(
        address=address,
        runtime_env={"py_modules": [str(PACKAGE_DIR)], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        progress = _Progress(log, label, total, len(parts), f"the Ray cluster at {address} ({cpus} CPUs)")
        task = ray.remote(num_cpus=1, max_retries=3)(_call)
        fn_ref = ray.put(fn)
        window = 2 * cpus  # tasks in flight: the cluster stays busy, the object store holds few batches
        pending: dict[Any, int] = {}  # task -> batch index
        results: list[Any] = [None] * len(parts)
        for i, part in enumerate(parts):
            pending[task.remote(fn_ref, part)] = i
            while len(pending) >= window or (i == len(parts) - 1 and pending):
                ready, _ = ray.wait(list(pending), num_returns=1)
                j = pending.pop(ready[0])
                results[j] = ray.get(ready[0])
                progress.advance(len(parts[j]))
        progress.finish()
        return results
    finally:
        ray.shutdown()
