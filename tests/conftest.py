"""Root test configuration: generic only (each test folder keeps its own fixtures)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Let tests import shared helpers as `tests.<folder>.<module>` however pytest
# was started (python -m pytest adds the cwd, plain `pytest` does not).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end test driving real processes (sipp, babelsip) on 127.0.0.1")
