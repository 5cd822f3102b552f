"""What a route answered, as the proxy core applies it, and the hook names.

These live below both the core and the routes layer: the core applies a
`Decision` and asks for hooks by name, the routes layer (host/routes/verbs.py)
builds decisions through its `Recorder` and declares which verb each hook
allows. Keeping them here means host/sip imports nothing above itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ON_REQUEST = "on_request"
ON_FAILURE = "on_failure"
ON_REPLY = "on_reply"
HOOKS = (ON_REQUEST, ON_FAILURE, ON_REPLY)


@dataclass(frozen=True, slots=True)
class Target:
    """A branch the services worked out (a registered binding): where the
    request goes beyond its Request-URI. Routes name targets as plain URIs;
    only the core's services build these."""

    uri: str                                   # the new Request-URI (the Contact)
    route: tuple[str, ...] = ()                # Route values to put first (a Path, RFC 3327)
    dest: tuple[str, str, int] | None = None   # forced next hop: the flow it registered on


@dataclass
class Decision:
    """What a route answered for one event. Runtimes build it through `Recorder`."""

    verb: str | None = None          # a DECISION verb name, or None for "no decision"
    code: int = 0                    # reply
    reason: str = ""                 # reply
    headers: list[tuple[str, str]] = field(default_factory=list)   # reply extra headers
    targets: list[str] = field(default_factory=list)   # relay
    # relay to bindings (lookup): groups tried in series, each in parallel
    branches: list[list[Target]] | None = None
    parallel: bool = True            # relay
    timeout: float | None = None     # relay, per branch, seconds
    contacts: list[str] = field(default_factory=list)  # redirect
    edits: list[tuple[Any, ...]] = field(default_factory=list)  # (verb, *args)
    vars: dict[str, Any] | None = None  # per-call variables to keep, None = unchanged
    # The services: what `authenticate` asked for (realm, password/ha1/credentials,
    # algorithms, identity), save/lookup options, and dialog tracking
    # (max_duration seconds, profiles {name: key}); None = not asked.
    auth: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)   # save, lookup
    dialog: dict[str, Any] | None = None
