"""The one bounded, ordered worker-pool map that every image reader and dataset builder uses.

Results come back in input order with a bounded number of items in flight, so a consumer that
stops early wastes little and results never pile up in memory. Threads suit image decoding
(PIL releases the GIL); spawned processes suit pure-Python work (SVG rendering, font probing).
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process of `ordered_map` was killed (out of memory, a signal) or could not start."""


def _run_chunk(fn: Callable, chunk: list, catch: bool) -> list:
    if not catch:
        return [(fn(item), None) for item in chunk]
    out = []
    for item in chunk:
        try:
            out.append((fn(item), None))
        except Exception as e:  # noqa: BLE001 -- handed to the caller with its item
            out.append((None, e))
    return out


def ordered_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int,
    processes: bool = False,
    chunk: int = 1,
    in_flight: int | None = None,
    catch: bool = False,
) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) for every item, in input order, computed on `workers` threads or processes.

    At most `in_flight` chunks of `chunk` items are submitted ahead of the consumer (default
    2 * workers). With `catch`, an exception raised by `fn` comes back as the value (the caller
    logs it and goes on); without, it propagates. `workers <= 1` maps in this thread. A dead
    worker process raises `WorkerDied` instead of hanging. `fn` must be picklable for processes.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    todo = iter(items)
    if workers <= 1:
        for item in todo:
            (value, error), = _run_chunk(fn, [item], catch)
            yield item, (error if error is not None else value)
        return
    in_flight = in_flight or 2 * workers
    pool: concurrent.futures.Executor
    if processes:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tmrjax-pool")
    pending: collections.deque = collections.deque()

    def submit() -> bool:
        batch = [item for _, item in zip(range(chunk), todo)]
        if batch:
            pending.append((batch, pool.submit(_run_chunk, fn, batch, catch)))
        return bool(batch)

    try:
        while len(pending) < in_flight and submit():
            pass
        while pending:
            batch, future = pending.popleft()
            results = future.result()
            submit()
            for item, (value, error) in zip(batch, results):
                yield item, (error if error is not None else value)
    except concurrent.futures.process.BrokenProcessPool as e:  # from a result, or from submitting to a broken pool
        raise WorkerDied(
            "a worker process died (killed, out of memory, or it could not re-import the main "
            "script: spawned processes fail when the script is read from stdin; run it from a file "
            "or `python -c`, or use one worker)") from e
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
