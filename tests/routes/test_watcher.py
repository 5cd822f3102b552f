import os

import pytest
import trio

from host.routes.watcher import is_scratch_name, watch_folder


@pytest.mark.parametrize("name, scratch", [
    ("main.lua", False), ("Main.java", False), ("route", False), ("routes.toml", False),
    (".main.lua.swp", True), ("main.lua~", True), ("main.lua.swp", True), ("#main.lua#", True),
    (".#main.lua", True), (".hidden", True), ("main.lua.tmp", True), ("4913", True), ("", True),
])
def test_scratch_names(name, scratch):
    assert is_scratch_name(name) is scratch


async def next_batch(receive, timeout=1.0):
    with trio.fail_after(timeout):
        return await receive.receive()


async def test_reports_edits_and_renames_but_not_scratch_files(tmp_path):
    send, receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_folder, tmp_path, send)
        start = trio.current_time()
        (tmp_path / "main.lua").write_text("x")
        batch = await next_batch(receive)
        assert batch == {tmp_path / "main.lua"}
        assert trio.current_time() - start < 0.5
        # an editor's save: swap file, temp file, rename over the route
        (tmp_path / ".main.lua.swp").write_text("swap")
        (tmp_path / "main.lua~").write_text("backup")
        (tmp_path / ".main.lua.tmp").write_text("y")
        os.replace(tmp_path / ".main.lua.tmp", tmp_path / "main.lua")
        batch = await next_batch(receive)
        assert batch == {tmp_path / "main.lua"}
        (tmp_path / "main.lua").unlink()
        assert await next_batch(receive) == {tmp_path / "main.lua"}
        nursery.cancel_scope.cancel()


async def test_cancellation_is_prompt(tmp_path):
    send, _receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        await nursery.start(watch_folder, tmp_path, send)
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start < 0.08   # one `step`; without the stop event, up to READY_PROBE_MS
