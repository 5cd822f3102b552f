"""The route contract as one table: hooks, verbs, event fields and host calls.

Everything a route can name in any language is declared here once. The host
derives its verb rules from it (`host.routes.verbs`), `sdk/contract.json` is
generated from it for the SDKs that load it at run time (Python), and
`tests/contract/` checks every SDK that keeps an idiomatic copy of its own
(Perl, Java, Lua) and the tables of `sdk/PROTOCOL.md` against it. Adding a
verb means: one row here, its host-side behaviour in `Recorder`, and each
SDK's wrapper; the contract tests fail until every SDK has it.

    python -m host.routes.contract --write   # regenerate sdk/contract.json
    python -m host.routes.contract --check   # exit 1 when it is stale

Types are the JSON ones the protocol carries ("string", "integer", "number",
"boolean", "list", "object", "any"), joined with "|" when several are
accepted; a parameter ending in "?" is optional (trailing ones may be
omitted, as on the wire).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

# The hook names are the core's (it decides when each is asked): one definition.
from host.sip.decision import HOOKS, ON_FAILURE, ON_REPLY, ON_REQUEST  # noqa: E402

DECISION = "decision"
EDIT = "edit"

# How a script reaches an event field, so each SDK can be checked for the
# idiom it promises: a plain attribute/accessor named after the field, the
# header(name)/headers(name) methods, the reply object (the hooks' second
# argument, `reply_info` on the request), or the per-call variables.
VALUE = "value"
HEADERS = "headers"
REPLY = "reply"
VARS = "vars"

CONTRACT_VERSION = 1
JSON_PATH = Path(__file__).resolve().parents[2] / "sdk" / "contract.json"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    optional: bool = False

    @property
    def spec(self) -> str:
        """The name as the verb signature writes it: "reason?" when optional."""
        return self.name + ("?" if self.optional else "")


@dataclass(frozen=True)
class VerbSpec:
    name: str
    kind: str                  # DECISION or EDIT
    hooks: tuple[str, ...]     # in HOOKS order
    params: tuple[Param, ...]  # in call order; optional ones last
    doc: str


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    hooks: tuple[str, ...]
    access: str                # VALUE, HEADERS, REPLY or VARS
    doc: str


@dataclass(frozen=True)
class HostCallSpec:
    op: str                    # "<service>.<name>": kv.*, registrar.*, dialog.*
    params: tuple[Param, ...]
    result: str
    doc: str


def _p(spec: str, type_: str) -> Param:
    return Param(spec.rstrip("?"), type_, spec.endswith("?"))


def _verb(name, kind, hooks, params, doc) -> VerbSpec:
    return VerbSpec(name, kind, tuple(h for h in HOOKS if h in hooks),
                    tuple(_p(n, t) for n, t in params), doc)


VERBS: tuple[VerbSpec, ...] = (
    _verb("reply", DECISION, (ON_REQUEST, ON_FAILURE),
          (("code", "integer"), ("reason?", "string"), ("headers?", "list|object")),
          "Answer the request with a final (or provisional, 101-199) response."),
    _verb("relay", DECISION, (ON_REQUEST, ON_FAILURE),
          (("targets?", "string|list"), ("opts?", "object")),
          "Proxy to one or more SIP URIs; opts: mode 'parallel'|'serial', timeout seconds per branch."),
    _verb("redirect", DECISION, (ON_REQUEST, ON_FAILURE), (("contacts", "string|list"),),
          "Answer 302 Moved Temporarily with these Contact URIs."),
    _verb("drop", DECISION, (ON_REQUEST, ON_REPLY), (),
          "Send nothing: on_request drops the request silently, on_reply swallows a provisional reply."),
    _verb("set_ruri", EDIT, (ON_REQUEST, ON_FAILURE), (("uri", "string"),),
          "Replace the request URI of the request to be relayed."),
    _verb("set_header", EDIT, HOOKS, (("name", "string"), ("value", "string")),
          "Replace every instance of a header with one value (request, or reply in on_reply)."),
    _verb("add_header", EDIT, HOOKS, (("name", "string"), ("value", "string")),
          "Append a header instance."),
    _verb("remove_header", EDIT, HOOKS, (("name", "string"),),
          "Remove every instance of a header."),
    _verb("record_route", EDIT, (ON_REQUEST,), (),
          "Insert our Record-Route so in-dialog requests come through this proxy."),
    # The services (registrar, digest, NAT, dialogs): the route decides whether,
    # the core does the RFC work.
    _verb("authenticate", EDIT, (ON_REQUEST,), (("realm", "string"), ("opts?", "object")),
          "Require digest credentials (RFC 7616) before the decision applies: without valid ones "
          "the core answers the challenge (401 for REGISTER, 407 otherwise) instead. opts: "
          "password or ha1 (the route's lookup for the request's auth_user), or credentials "
          "(a file beside the routes); algorithms (default ['MD5']); identity (default true: "
          "the user must be the To user of a REGISTER, the From user otherwise)."),
    _verb("save", DECISION, (ON_REQUEST,), (("opts?", "object"),),
          "Registrar (RFC 3261 §10.3): apply this REGISTER's bindings and answer it. opts: aor, "
          "min_expires, max_expires, default_expires, max_contacts."),
    _verb("lookup", DECISION, (ON_REQUEST, ON_FAILURE), (("opts?", "object"),),
          "Relay to the registered bindings of the request URI's address-of-record (q groups in "
          "series, equal q in parallel, NATed ones at their received address). opts: aor; code "
          "(default 404) and reason when it has none; timeout seconds per branch."),
    _verb("fix_contact", EDIT, (ON_REQUEST, ON_REPLY), (),
          "A UA behind a NAT: rewrite its Contact to the address the message came from."),
    _verb("limit_duration", EDIT, (ON_REQUEST,), (("seconds", "number"),),
          "Track the call as a dialog and end it (BYE both ways) after this many seconds."),
    _verb("add_profile", EDIT, (ON_REQUEST,), (("name", "string"), ("key?", "string")),
          "Track the call as a dialog and count it in a named profile (see dialog.count)."),
)


def _field(name, type_, doc, access=VALUE, hooks=HOOKS) -> FieldSpec:
    return FieldSpec(name, type_, tuple(hooks), access, doc)


# Every field is present in every event of its hooks (empty string, 0 or an
# empty list when not applicable), in the order the host builds them.
FIELDS: tuple[FieldSpec, ...] = (
    _field("hook", "string", "the hook this event is for"),
    _field("method", "string", "INVITE, REGISTER, ..."),
    _field("ruri", "string", "the request URI"),
    _field("ruri_user", "string", "the request URI's user part"),
    _field("ruri_host", "string", "the request URI's host part"),
    _field("ruri_local", "boolean",
           "the request URI's domain is this server's (one of its addresses, any of its ports or "
           "none, or a --domain name): a user registered here"),
    _field("call_id", "string", "the Call-ID"),
    _field("cseq", "integer", "the CSeq number"),
    _field("from_uri", "string", "the From URI"),
    _field("from_tag", "string", "the From tag"),
    _field("to_uri", "string", "the To URI"),
    _field("to_tag", "string", "the To tag"),
    _field("source_ip", "string", "where the request came from"),
    _field("source_port", "integer", "the source port"),
    _field("transport", "string", "udp or tcp"),
    _field("in_dialog", "boolean", "the request has a To tag"),
    _field("auth_user", "string", "the username of the request's digest credentials, or empty",
           hooks=(ON_REQUEST,)),
    _field("headers", "list", "every header as [name, value] in wire order, compact names expanded",
           access=HEADERS),
    _field("body", "string", "the message body"),
    _field("vars", "object", "per-call variables set by earlier decisions", access=VARS),
    _field("reply", "object", '{"code", "reason", "headers"} of the reply the hook is about',
           access=REPLY, hooks=(ON_FAILURE, ON_REPLY)),
)


def _call(op, params, result, doc) -> HostCallSpec:
    return HostCallSpec(op, tuple(_p(n, t) for n, t in params), result, doc)


HOST_CALLS: tuple[HostCallSpec, ...] = (
    _call("kv.get", (("key", "string"),), "any",
          "the stored value, or null"),
    _call("kv.set", (("key", "string"), ("value", "any"), ("ttl?", "number")), "null",
          "store a value; ttl seconds until it expires, null = never"),
    _call("kv.delete", (("key", "string"),), "boolean",
          "true if the key existed"),
    _call("kv.incr", (("key", "string"), ("delta?", "integer"), ("ttl?", "number")), "integer",
          "the new integer (an absent key counts as 0; the ttl applies when the call creates it)"),
    _call("registrar.lookup", (("aor", "string"),), "list",
          "the live bindings of an address-of-record: objects with contact, expires (seconds "
          "left), q, received, transport, path, user_agent, instance, reg_id"),
    _call("dialog.count", (("profile", "string"), ("key?", "string")), "integer",
          "how many calls are active in a profile (under a key)"),
)

# Services whose ops are reserved for later revisions of the contract: a
# worker probing them today gets an error result (PROTOCOL.md §5).
RESERVED_SERVICES = ("auth",)


def as_json() -> dict:
    """The table as sdk/contract.json holds it (what the SDKs load)."""
    def params(ps):
        return [{"name": p.name, "type": p.type, "optional": p.optional} for p in ps]
    return {
        "version": CONTRACT_VERSION,
        "hooks": list(HOOKS),
        "verbs": [{"name": v.name, "kind": v.kind, "hooks": list(v.hooks),
                   "params": params(v.params), "doc": v.doc} for v in VERBS],
        "fields": [{"name": f.name, "type": f.type, "hooks": list(f.hooks),
                    "access": f.access, "doc": f.doc} for f in FIELDS],
        "host_calls": [{"op": c.op, "params": params(c.params), "result": c.result,
                        "doc": c.doc} for c in HOST_CALLS],
        "reserved_services": list(RESERVED_SERVICES),
    }


def render() -> str:
    # Stable text (sorted nowhere, indented, one trailing newline) so the
    # committed file diffs line by line when a row changes.
    return json.dumps(as_json(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        JSON_PATH.write_text(render(), encoding="utf-8")
        return 0
    if argv == ["--check"]:
        current = JSON_PATH.read_text(encoding="utf-8") if JSON_PATH.exists() else ""
        if current != render():
            print(f"{JSON_PATH} is stale: run python -m host.routes.contract --write", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m host.routes.contract --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
