"""Compare what an SDK or PROTOCOL.md offers with the contract table.

Each check returns a list of problems, one sentence each, naming the SDK (or
document) and the missing or misnamed item, so a failing test says what to
add where. The dumps are the JSON printed by each runner's --dump-contract.
"""

from __future__ import annotations

import re

from host.routes import contract


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def snake(name: str) -> str:
    return name


# The accessor each access kind of contract.FIELDS promises, beside the plain
# one named after the field: the reply object is `reply_info` because
# `reply` is the verb.
_REPLY_ACCESSOR = "reply_info"


# Which object of the request offers each service's host calls, and the key of
# the dumps that lists its methods ({method: op}): kv.* is the store
# (req.store.get), the others are named after their service
# (req.registrar.lookup, req.dialog.count).
SERVICE_OBJECTS = {"kv": "store", "registrar": "registrar", "dialog": "dialog"}


def check_dump(dump: dict, idiom=snake) -> list[str]:
    sdk = dump.get("sdk", "?")
    problems = []
    if list(dump.get("hooks", ())) != list(contract.HOOKS):
        problems.append(f"{sdk}: hooks are {dump.get('hooks')}, the contract's are {list(contract.HOOKS)}")
    verbs, fields = dump.get("verbs", {}), dump.get("fields", {})
    for v in contract.VERBS:
        method = idiom(v.name)
        got = verbs.get(method)
        if got is None:
            problems.append(f"{sdk}: verb {v.name!r} missing (no verb method {method!r})")
            continue
        if got.get("sends") != v.name:
            problems.append(f"{sdk}: verb method {method!r} sends {got.get('sends')!r}, not {v.name!r}")
        if sorted(got.get("hooks", ())) != sorted(v.hooks):
            problems.append(f"{sdk}: verb {v.name!r} allowed in {got.get('hooks')}, "
                            f"the contract says {list(v.hooks)}")
        if got.get("decision") != (v.kind == contract.DECISION):
            problems.append(f"{sdk}: verb {v.name!r} is {'a' if got.get('decision') else 'not a'} "
                            f"decision there, the contract says {v.kind}")
    known = {idiom(v.name) for v in contract.VERBS}
    for method, got in sorted(verbs.items()):
        if method not in known:
            problems.append(f"{sdk}: offers verb method {method!r} (sends {got.get('sends')!r}) "
                            "that the contract does not have")
    names = {f.name for f in contract.FIELDS}
    for f in contract.FIELDS:
        if f.access == contract.VALUE:
            accessor, reads = idiom(f.name), [f.name]
            # The hook comes with the event message, not inside the event.
            if f.name == "hook":
                reads = None
        elif f.access == contract.HEADERS:
            for accessor in ("header", "headers"):
                if fields.get(accessor) != [f.name]:
                    problems.append(f"{sdk}: field {f.name!r}: accessor {accessor!r} reads "
                                    f"{fields.get(accessor, 'nothing (missing)')}, not [{f.name!r}]")
            continue
        elif f.access == contract.REPLY:
            accessor, reads = idiom(_REPLY_ACCESSOR), None
        else:
            accessor, reads = idiom(f.name), None
        if accessor not in fields:
            problems.append(f"{sdk}: field {f.name!r} missing (no accessor {accessor!r})")
        elif reads is not None and fields[accessor] != reads:
            problems.append(f"{sdk}: accessor {accessor!r} reads {fields[accessor]}, not {reads}")
    for accessor, reads in sorted(fields.items()):
        for key in reads:
            if key not in names:
                problems.append(f"{sdk}: accessor {accessor!r} reads event key {key!r}, "
                                "which is not a field of the contract (misnamed?)")
    for c in contract.HOST_CALLS:
        service, _, op = c.op.partition(".")
        obj = SERVICE_OBJECTS.get(service)
        if obj is None:
            # Each new service needs its rule: which object of each SDK offers it.
            problems.append(f"{sdk}: no rule yet for checking host call {c.op!r}")
            continue
        if idiom(obj) not in fields:
            problems.append(f"{sdk}: host call {c.op!r}: the request has no accessor {idiom(obj)!r}")
        method, offered = idiom(op), dump.get(obj, {})
        if method not in offered:
            problems.append(f"{sdk}: host call {c.op!r} missing (no {obj} method {method!r})")
        elif offered[method] != c.op:
            problems.append(f"{sdk}: {obj} method {method!r} calls {offered[method]!r}, not {c.op!r}")
    ops = {c.op for c in contract.HOST_CALLS}
    for obj in sorted(set(SERVICE_OBJECTS.values())):
        for method, op in sorted(dump.get(obj, {}).items()):
            if op not in ops:
                problems.append(f"{sdk}: {obj} method {method!r} calls {op!r}, "
                                "not a host call of the contract")
    return problems


# -- PROTOCOL.md --------------------------------------------------------------

def _section(text: str, title: str) -> str:
    m = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def _rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or re.match(r"^\|[-| ]+\|$", line):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return rows[1:]  # the header row


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _params(cell: str) -> list[str]:
    cell = cell.strip("`[] ")
    return [] if cell in ("", "—", "-") else [p.strip() for p in cell.split(",")]


def _table(text: str, title: str) -> dict[str, list[str]]:
    """The rows of a section's table by each name in their first cell."""
    return {name: row for row in _rows(_section(text, title)) for name in _names(row[0])}


def check_protocol(text: str) -> list[str]:
    doc = "PROTOCOL.md"
    problems = []
    verbs = _table(text, "Verbs")
    for v in contract.VERBS:
        row = verbs.pop(v.name, None)
        if row is None:
            problems.append(f"{doc}: verb {v.name!r} missing from the table of §7")
            continue
        params = [p.spec for p in v.params]
        if _params(row[1]) != params:
            problems.append(f"{doc}: verb {v.name!r} args are {row[1]!r}, the contract says {', '.join(params) or '—'}")
        if row[2] != v.kind:
            problems.append(f"{doc}: verb {v.name!r} kind is {row[2]!r}, the contract says {v.kind!r}")
        hooks = list(contract.HOOKS) if row[3] == "all" else [h.strip() for h in row[3].split(",")]
        if sorted(hooks) != sorted(v.hooks):
            problems.append(f"{doc}: verb {v.name!r} allowed in {row[3]!r}, the contract says {', '.join(v.hooks)}")
    problems += [f"{doc}: verb {n!r} in §7 is not in the contract" for n in sorted(verbs)]
    fields = _table(text, "The event object")
    for f in contract.FIELDS:
        row = fields.pop(f.name, None)
        if row is None:
            problems.append(f"{doc}: field {f.name!r} missing from the table of §6")
        elif row[1].split()[0] != f.type:
            problems.append(f"{doc}: field {f.name!r} has type {row[1]!r}, the contract says {f.type!r}")
    problems += [f"{doc}: field {n!r} in §6 is not in the contract" for n in sorted(fields)]
    calls = _table(text, "Host calls")
    for c in contract.HOST_CALLS:
        row = calls.pop(c.op, None)
        if row is None:
            problems.append(f"{doc}: host call {c.op!r} missing from the table of §5")
            continue
        params = [p.spec for p in c.params]
        if _params(row[1]) != params:
            problems.append(f"{doc}: host call {c.op!r} args are {row[1]!r}, the contract says [{', '.join(params)}]")
    problems += [f"{doc}: host call {n!r} in §5 is not in the contract" for n in sorted(calls)]
    return problems
