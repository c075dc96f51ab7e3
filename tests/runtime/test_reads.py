"""The read workers' order: misses before queued prefetches, a prefetch moved up when awaited."""

import threading

import pytest

from expertcache.runtime.reads import UrgentFirst


def _blocked_worker():
    """One worker, held busy until the returned event is set, so that later reads queue up."""
    reads = UrgentFirst(1, "test-read")
    release, started = threading.Event(), threading.Event()
    reads.submit(True, lambda: (started.set(), release.wait()))
    assert started.wait(5)
    return reads, release


def test_misses_first_then_awaited_prefetch_then_the_rest_in_order():
    reads, release = _blocked_worker()
    done = []
    first = reads.submit(False, done.append, "prefetch 1")
    second = reads.submit(False, done.append, "prefetch 2")
    reads.submit(False, done.append, "prefetch 3")
    reads.submit(True, done.append, "miss")
    reads.hurry(second)
    reads.hurry(second)  # twice: still read once
    release.set()
    reads.shutdown()  # runs what is queued
    assert done == ["miss", "prefetch 2", "prefetch 1", "prefetch 3"]
    assert first.done() and second.result() is None


def test_hurrying_a_read_already_taken_changes_nothing():
    reads = UrgentFirst(1, "test-read")
    future = reads.submit(False, lambda: 7)
    assert future.result(5) == 7
    reads.hurry(future)
    reads.shutdown()
    assert future.result() == 7


def test_a_failed_read_raises_where_it_is_awaited():
    reads = UrgentFirst(2, "test-read")

    def fail():
        raise OSError("disk gone")

    future = reads.submit(True, fail)
    with pytest.raises(OSError, match="disk gone"):
        future.result(5)
    assert reads.submit(True, lambda: 1).result(5) == 1  # the worker survives
    reads.shutdown()
    with pytest.raises(RuntimeError, match="after the store closed"):
        reads.submit(True, lambda: 1)
