"""bench/proctree.py: the process tree read from /proc (Linux)."""

import os
import subprocess
import sys

import pytest

from bench.proctree import tree_pids, tree_rss_mb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_the_tree_holds_children_and_grandchildren_and_their_memory():
    # a shell whose child is a sleep: both are in our tree, the sleep under the shell
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(shell.stdout.readline())
        mine = tree_pids(os.getpid())
        assert {os.getpid(), shell.pid, grandchild} <= set(mine)
        assert set(tree_pids(shell.pid)) == {shell.pid, grandchild}
        assert tree_rss_mb(os.getpid()) > tree_rss_mb(shell.pid) > 0
    finally:
        os.kill(grandchild, 15)
        shell.wait(timeout=5)
    assert tree_pids(shell.pid) == []   # reaped: no longer in /proc
