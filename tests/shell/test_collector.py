"""The serving process's collector policy (host/shell/collector.py): short-lived
cycles are still collected without anyone calling gc.collect(), what existed
at start is frozen, and no full collection runs on its own."""

import gc
import weakref

import pytest

from host.shell.collector import FULL_THRESHOLD, settle_for_serving


class Node:
    pass


@pytest.fixture
def settled():
    before = gc.get_threshold()
    settle_for_serving()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_what_exists_at_start_is_frozen(settled):
    assert gc.get_freeze_count() > 0


def test_a_young_cycle_is_collected_without_an_explicit_collection(settled):
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    # Allocating makes the young generation collect (bounded: a few thresholds).
    for _ in range(20):
        junk = [Node() for _ in range(gc.get_threshold()[0])]
        del junk
        if gone() is None:
            break
    assert gone() is None


def test_no_full_collection_runs_on_its_own(settled):
    fulls = []

    def watch(phase, info):
        if phase == "start" and info["generation"] == 2:
            fulls.append(info)

    gc.callbacks.append(watch)
    try:
        keep = []
        for _ in range(200):   # 200 young thresholds of survivors: 20 middle collections
            keep.append([Node() for _ in range(gc.get_threshold()[0])])
    finally:
        gc.callbacks.remove(watch)
    assert gc.get_threshold()[2] == FULL_THRESHOLD
    assert fulls == []
