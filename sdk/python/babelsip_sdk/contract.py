"""The route contract as this SDK reads it: `contract.json` beside this file.

The file is generated from the host's table (host/routes/contract.py, which
writes sdk/contract.json; in the source tree this package's copy is a link to
it), so the hooks, which hook may call which verb, which verbs decide and the
event fields come from the one table instead of a hand-kept copy. The verb
methods themselves stay written out in request.py: their Python signatures
(keyword options, defaults) are this SDK's idiom, not table data.
"""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("contract.json")

TABLE: dict = json.loads(PATH.read_text(encoding="utf-8"))

HOOKS: tuple[str, ...] = tuple(TABLE["hooks"])
ALLOWED: dict[str, frozenset[str]] = {v["name"]: frozenset(v["hooks"]) for v in TABLE["verbs"]}
DECISIONS: frozenset[str] = frozenset(v["name"] for v in TABLE["verbs"] if v["kind"] == "decision")

# Fields read as plain attributes (`req.ruri_user`): every "value" field but
# the hook, which comes with the event message rather than inside the event.
# The default is what PROTOCOL.md §6 promises for a field not applicable.
_DEFAULTS = {"string": "", "integer": 0, "boolean": False}
VALUE_FIELDS: dict[str, object] = {
    f["name"]: _DEFAULTS[f["type"]]
    for f in TABLE["fields"] if f["access"] == "value" and f["name"] != "hook"
}
