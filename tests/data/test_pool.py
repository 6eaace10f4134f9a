"""The ordered worker-pool map: order, bounded read-ahead, errors with their items, dead workers."""

import os
import threading
import time

import pytest

from tmrjax.data.pool import WorkerDied, ordered_map


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def _die(x: int) -> int:
    os._exit(1)


def _die_late_on_two(x: int) -> int:
    if x == 2:
        time.sleep(0.5)
        os._exit(1)
    return x


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("chunk", [1, 4])
def test_results_in_input_order(workers, chunk):
    out = list(ordered_map(_square, range(23), workers=workers, chunk=chunk))
    assert out == [(i, i * i) for i in range(23)]


def test_processes_in_input_order():
    out = list(ordered_map(_square, range(10), workers=2, processes=True, chunk=3))
    assert out == [(i, i * i) for i in range(10)]


def test_catch_returns_the_exception_with_its_item_and_goes_on():
    out = dict(ordered_map(_fail_on_three, range(6), workers=2, catch=True))
    assert isinstance(out[3], ValueError) and str(out[3]) == "three"
    assert [out[i] for i in (0, 1, 2, 4, 5)] == [0, 1, 2, 4, 5]


def test_without_catch_the_exception_propagates():
    with pytest.raises(ValueError, match="three"):
        list(ordered_map(_fail_on_three, range(6), workers=2))


def test_read_ahead_is_bounded():
    started = []
    lock = threading.Lock()

    def record(x):
        with lock:
            started.append(x)
        return x

    stream = ordered_map(record, range(1000), workers=2, in_flight=3, chunk=2)
    next(stream)
    # the consumed chunk's replacement plus at most `in_flight` chunks of 2 items
    assert len(started) <= 2 * (3 + 1)
    stream.close()


def test_a_dead_worker_process_is_an_error_not_a_hang():
    with pytest.raises(WorkerDied, match="worker process died"):
        list(ordered_map(_die, range(4), workers=2, processes=True))


def test_a_worker_dying_between_results_is_an_error_too():
    # item 1 is back before item 2's worker dies, so the pool is found broken when the next task is submitted
    with pytest.raises(WorkerDied, match="worker process died"):
        for _ in ordered_map(_die_late_on_two, range(6), workers=2, processes=True, in_flight=3):
            time.sleep(2)
