"""Root test configuration: generic only (each test folder keeps its own fixtures)."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Let tests import shared helpers as `tests.<folder>.<module>` however pytest
# was started (python -m pytest adds the cwd, plain `pytest` does not).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Route workers of a server started as root run as nobody
# (host/privileges/jail.py) and read their route files, and the Java classes
# compiled for them, from the tests' temporary folders. pytest makes those
# 0700 under /tmp/pytest-of-root, which every pytest session started as root
# resets to 0700. So, as root, the sessions' temporary folders live in a
# root of their own (0711: passable, not listable), one per session, and each
# folder made in it is passable too (x for others, never r). The interpreter
# must be one nobody can run: `make venv` sees to it (Makefile).
TEMP_ROOT = Path(tempfile.gettempdir()) / f"babelsip-tests-{os.geteuid()}"
SESSIONS_KEPT = 3      # as pytest keeps its last three


def _session_basetemp() -> Path:
    TEMP_ROOT.mkdir(mode=0o711, exist_ok=True)
    info = TEMP_ROOT.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise pytest.UsageError(f"{TEMP_ROOT}: not a directory of ours: remove it")
    os.chmod(TEMP_ROOT, 0o711)
    old = sorted(TEMP_ROOT.glob("pytest-*"), key=lambda p: p.stat().st_mtime)[:-SESSIONS_KEPT]
    for path in old:
        pid = path.name.removeprefix("pytest-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)
    return TEMP_ROOT / f"pytest-{os.getpid()}"


class PassableTempPaths:
    """pytest's tmp_path_factory, whose new folders others may pass through."""

    def __init__(self, factory):
        self._factory = factory

    def __getattr__(self, name):
        return getattr(self._factory, name)

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        path = self._factory.mktemp(basename, numbered)
        top = self._factory.getbasetemp()
        for folder in (path, *path.parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(folder, stat.S_IMODE(mode) | stat.S_IXOTH)
            if folder == top or folder == folder.parent:
                break
        return path


@pytest.fixture(scope="session")
def tmp_path_factory(tmp_path_factory):
    if os.geteuid() != 0:
        return tmp_path_factory
    return PassableTempPaths(tmp_path_factory)


def _workers_cannot_run() -> str | None:
    """Why route workers cannot run here (as root they are nobody, who must
    be able to run this interpreter), or None."""
    if os.geteuid() != 0:
        return None
    from host.privileges.identity import worker_fallback
    nobody = worker_fallback()
    try:
        # What a Python route worker does: this interpreter, the checkout's SDK.
        subprocess.run([sys.executable, "-c", "import babelsip_sdk.runner"], user=nobody.uid,
                       group=nobody.gid, extra_groups=[], check=True, capture_output=True,
                       timeout=30, cwd="/", env={"PYTHONPATH": str(REPO / "sdk" / "python")})
    except (OSError, subprocess.SubprocessError):
        return (f"{nobody.name} cannot run {sys.executable} with {REPO}/sdk/python, and route "
                f"workers run as {nobody.name}: build the venv with `make venv` and clone where "
                f"{nobody.name} can read (Makefile, worker-access).")
    return None


_WORKERS_BLOCKED = _workers_cannot_run()
if _WORKERS_BLOCKED is not None:
    # The fallback (host/privileges/jail.py): route workers stay root rather
    # than every test that starts one failing. tests/privileges and
    # tests/e2e/test_privilege_drop.py unset it, or name the user.
    os.environ.setdefault("BABELSIP_TEST_ROOT_WORKERS", "1")


def pytest_terminal_summary(terminalreporter):
    # Once, at the end, where -q shows it too, rather than in every test that starts a worker.
    if _WORKERS_BLOCKED is not None:
        terminalreporter.write_sep("=", "route workers", red=True)
        terminalreporter.write_line(f"WARNING: {_WORKERS_BLOCKED} Route workers ran as root instead.")


@pytest.hookimpl(tryfirst=True)   # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config):
    if os.geteuid() == 0 and config.option.basetemp is None:
        config.option.basetemp = str(_session_basetemp())
    config.addinivalue_line(
        "markers", "e2e: end-to-end test driving real processes (sipp, babelsip) on 127.0.0.1")
