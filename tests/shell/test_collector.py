"""The serving process's collector policy (host/shell/collector.py): short-lived
cycles are still collected without anyone calling gc.collect(), what exists
at start and what survives a young collection is frozen, no older generation
collects on its own, and collect_all reaches frozen cycles."""

import gc
import weakref

import pytest

from host.shell.collector import NEVER, collect_all, settle_for_serving, stop_freezing


class Node:
    pass


@pytest.fixture
def settled():
    before = gc.get_threshold()
    settle_for_serving()
    yield
    stop_freezing()
    gc.unfreeze()
    gc.set_threshold(*before)


def young_collections(n: int = 3) -> None:
    """Allocate enough for `n` young collections to run by themselves."""
    for _ in range(n):
        junk = [Node() for _ in range(gc.get_threshold()[0] + 1)]
        del junk


def test_what_exists_at_start_is_frozen(settled):
    assert gc.get_freeze_count() > 0


def test_a_young_cycle_is_collected_without_an_explicit_collection(settled):
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    for _ in range(20):   # bounded: a few thresholds
        young_collections(1)
        if gone() is None:
            break
    assert gone() is None


def test_survivors_of_a_young_collection_are_frozen_and_still_freed_by_refcount(settled):
    keep = Node()
    frozen_before = gc.get_freeze_count()
    young_collections()
    assert gc.get_freeze_count() > frozen_before
    assert not any(o is keep for o in gc.get_objects(generation=1))
    assert not any(o is keep for o in gc.get_objects(generation=2))
    gone = weakref.ref(keep)
    del keep
    assert gone() is None   # no collection needed: reference counting


def test_no_older_generation_collects_on_its_own(settled):
    older = []

    def watch(phase, info):
        if phase == "start" and info["generation"] > 0:
            older.append(info)

    gc.callbacks.append(watch)
    try:
        keep = []
        for _ in range(200):   # 200 young thresholds of survivors
            keep.append([Node() for _ in range(gc.get_threshold()[0])])
    finally:
        gc.callbacks.remove(watch)
    assert gc.get_threshold()[1:] == (NEVER, NEVER)
    assert older == []


def test_collect_all_collects_a_cycle_frozen_while_it_was_alive(settled):
    a, b = Node(), Node()
    a.other, b.other = b, a
    young_collections()   # alive now: frozen
    gone = weakref.ref(a)
    del a, b
    young_collections()
    assert gone() is not None   # frozen garbage: no young collection sees it
    collect_all()
    assert gone() is None
    assert gc.get_freeze_count() > 0   # what is alive is frozen again
