"""Root test configuration: generic only (each test folder keeps its own fixtures)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Let tests import shared helpers as `tests.<folder>.<module>` however pytest
# was started (python -m pytest adds the cwd, plain `pytest` does not).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Route workers of a root server become nobody (host/privileges/jail.py), who
# can read neither pytest's 0700 tmp_path nor an interpreter under /root: the
# suite keeps them root. tests/privileges and tests/e2e/test_privilege_drop.py
# unset it, or name the user, to test the real thing.
os.environ.setdefault("BABELSIP_TEST_ROOT_WORKERS", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end test driving real processes (sipp, babelsip) on 127.0.0.1")
