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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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

    def __init__(self, log: logging.Logger, label: str, total: int, n_batches: int | None, where: str) -> None:
        self.log, self.label, self.total = log, label, total
        self.done = self.batches_done = 0
        self.start = time.perf_counter()
        self.every = max(1, n_batches // 20) if n_batches else 0  # 0: set from the first batch's size
        if n_batches:
            log.info("%s: %d records in %d batches on %s", label, total, n_batches, where)
        else:
            log.info("%s: %d records on %s", label, total, where)

    def advance(self, n: int) -> None:
        self.done += n
        self.batches_done += 1
        if not self.every:  # about 20 lines per phase however many batches: a long run's log stays readable
            self.every = max(1, -(-self.total // max(n, 1)) // 20)
        if self.batches_done % self.every == 0 and self.done < self.total:
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
    out: list[R] = []
    for result in imap_batches(
        fn, parts, total=len(items), executor=executor, workers=workers, label=label, log=log, n_batches=len(parts)
    ):
        out.extend(result)
    return out


def imap_batches(
    fn: Callable[[Sequence[T]], Sequence[R]],
    parts: Iterable[Sequence[T]],
    *,
    total: int,
    executor: Executor,
    workers: int,
    label: str,
    log: logging.Logger,
    n_batches: int | None = None,
) -> Iterator[Sequence[R]]:
    """``fn`` on each batch of `parts`, yielded in input order as they are done: the streaming :func:`map_batches`.

    `parts` is consumed lazily: at most a few batches per worker are in flight, so a stage that reads its
    input in batches and writes each result before the next holds a bounded number of records in memory.

    Args:
        fn: as for :func:`map_batches`; it returns one result per item of its batch (checked).
        parts: the batches (cut by the caller at a size that does not depend on the worker count).
        total: the number of items in all batches (for progress lines).
        executor, workers, label, log: as for :func:`map_batches`.
        n_batches: the number of batches when known (progress lines), else estimated from the first.
    """
    results = _run(
        fn, parts, total=total, n_batches=n_batches, executor=executor, workers=workers, label=label, log=log
    )
    for part_len, result in results:
        if len(result) != part_len:
            raise ValueError(f"{label}: a batch of {part_len} items gave {len(result)} results")
        yield result


def _run(
    fn: Callable[[Sequence[T]], Sequence[R]],
    parts: Iterable[Sequence[T]],
    *,
    total: int,
    n_batches: int | None,
    executor: Executor,
    workers: int,
    label: str,
    log: logging.Logger,
) -> Iterator[tuple[int, Sequence[R]]]:
    """(batch length, `fn` on the batch) for each of `parts`, in order."""
    if total == 0:
        return
    if executor.kind == "ray":
        yield from _run_ray(fn, parts, executor.address or "", label, log, total, n_batches)
        return
    n = min(resolve_workers(workers), n_batches or total)
    where = f"{n} local processes" if n > 1 else "the stage's process"
    progress = _Progress(log, label, total, n_batches, where)
    if n <= 1:
        for part in parts:
            result = fn(part)
            progress.advance(len(part))
            yield len(part), result
    else:
        yield from _run_pool(fn, parts, n, progress)
    progress.finish()


def _run_pool(
    fn: Callable[[Sequence[T]], Sequence[R]], parts: Iterable[Sequence[T]], n: int, progress: _Progress
) -> Iterator[tuple[int, Sequence[R]]]:
    ctx = multiprocessing.get_context("forkserver")
    func = getattr(fn, "func", fn)  # a functools.partial: the module of the function it wraps
    # imported once by the fork server, before its first child (no effect once the server runs)
    ctx.set_forkserver_preload([func.__module__])
    window = 2 * n  # batches in flight: every process busy, few batches held in memory
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        queue: deque[tuple[int, Future]] = deque()
        for part in parts:
            queue.append((len(part), pool.submit(fn, part)))
            while len(queue) >= window:
                size, future = queue.popleft()
                result = future.result()
                progress.advance(size)
                yield size, result
        while queue:
            size, future = queue.popleft()
            result = future.result()
            progress.advance(size)
            yield size, result


def _call(fn: Callable[[Any], Any], part: Any) -> Any:
    """A Ray task: `fn` on one batch (module level, so Ray pickles it by reference)."""
    return fn(part)


def _run_ray(
    fn: Callable[[Sequence[T]], Sequence[R]],
    parts: Iterable[Sequence[T]],
    address: str,
    label: str,
    log: logging.Logger,
    total: int,
    n_batches: int | None,
) -> Iterator[tuple[int, Sequence[R]]]:
    import ray

    ray.init(
        address=address,
        runtime_env={"py_modules": [str(PACKAGE_DIR)], "env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        progress = _Progress(log, label, total, n_batches, f"the Ray cluster at {address} ({cpus} CPUs)")
        task = ray.remote(num_cpus=1, max_retries=3)(_call)
        fn_ref = ray.put(fn)
        window = 2 * cpus  # tasks in flight: the cluster stays busy, the object store holds few batches
        queue: deque[tuple[int, Any]] = deque()  # (batch length, task), in input order
        for part in parts:
            queue.append((len(part), task.remote(fn_ref, part)))
            while len(queue) >= window:
                size, ref = queue.popleft()
                result = ray.get(ref)
                progress.advance(size)
                yield size, result
        while queue:
            size, ref = queue.popleft()
            result = ray.get(ref)
            progress.advance(size)
            yield size, result
        progress.finish()
    finally:
        ray.shutdown()
