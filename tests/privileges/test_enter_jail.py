"""Jail.spawn and enter_jail.py: a worker enters its jail in its own first
program, so the server's spawn can vfork (no preexec, no user change), and
every failure of the jail or of the exec comes back as an exception with
nothing left running. Real processes; the jail tests with a worker identity
and confinement are in test_worker_jail.py."""

import os
import resource
import subprocess

import pytest
import trio

from host.privileges import jail
from host.privileges.jail import Jail, JailError


@pytest.fixture
def spawned(monkeypatch):
    """What open_process was given and what it started."""
    seen = {}
    real = trio.lowlevel.open_process

    async def recording(command, **options):
        seen.update(command=command, options=options)
        seen["proc"] = await real(command, **options)
        return seen["proc"]
    monkeypatch.setattr(trio.lowlevel, "open_process", recording)
    return seen


async def test_the_spawn_has_no_preexec_or_user_change_and_the_worker_is_jailed(tmp_path, spawned):
    probe = ["/bin/sh", "-c", "ulimit -n; grep NoNewPrivs /proc/self/status"]
    proc = await Jail(None, tmp_path).spawn(probe, [(resource.RLIMIT_NOFILE, 64, 64)],
                                            stdout=subprocess.PIPE)
    out = b""
    async with proc.stdout:
        while chunk := await proc.stdout.receive_some():
            out += chunk
    assert await proc.wait() == 0
    assert out.decode().split() == ["64", "NoNewPrivs:", "1"]
    # What CPython needs to vfork instead of copying the server.
    assert not {"preexec_fn", "user", "group", "extra_groups"} & set(spawned["options"])
    assert spawned["command"][3] == jail.ENTER_JAIL and spawned["command"][5:] == probe


async def test_a_missing_program_is_file_not_found_and_nothing_is_left(tmp_path, spawned):
    with pytest.raises(FileNotFoundError) as caught:
        await Jail(None, tmp_path).spawn([str(tmp_path / "no-such-program")], [])
    assert caught.value.filename == str(tmp_path / "no-such-program")
    assert spawned["proc"].returncode == 127   # reaped


async def test_a_program_that_may_not_run_is_a_permission_error(tmp_path, spawned):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)
    with pytest.raises(PermissionError):
        await Jail(None, tmp_path).spawn([str(script)], [])
    assert spawned["proc"].returncode == 127


async def test_a_failing_step_is_a_jail_error_and_the_program_never_runs(tmp_path, spawned):
    marker = tmp_path / "ran"
    with pytest.raises(JailError, match="limit"):
        await Jail(None, tmp_path).spawn(["/bin/sh", "-c", f"touch {marker}"],
                                         [(resource.RLIMIT_NOFILE, 10, 5)])   # soft above hard
    assert spawned["proc"].returncode == 127
    assert not marker.exists()


async def test_a_spawn_cancelled_before_the_jail_is_entered_leaves_no_worker(tmp_path, spawned):
    with trio.move_on_after(0.002) as scope:   # the jail takes ~20 ms to enter
        await Jail(None, tmp_path).spawn(["/bin/sleep", "30"], [])
    assert scope.cancelled_caught
    assert spawned["proc"].returncode is not None   # killed and reaped, not left running
