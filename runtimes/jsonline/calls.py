"""Host calls a worker may make inside an event (PROTOCOL.md "Host calls").

A table from op name to an async function over the store (the kv.* store,
registrar.lookup, dialog.count: contract.HOST_CALLS); an unknown op or a
refused operation is an error *result*, never a protocol error, so a worker
can probe for optional ops (auth.* is reserved for later).
"""

from __future__ import annotations

from host.storage import Store, StoreError


class CallError(Exception):
    """Answered to the worker as {"type":"result","error":...}."""


def _key(args, i=0):
    if len(args) <= i or not isinstance(args[i], str) or not args[i]:
        raise CallError("key must be a non-empty string")
    return args[i]


def _ttl(args, i):
    ttl = args[i] if len(args) > i else None
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
        raise CallError(f"ttl must be a positive number of seconds or null, got {ttl!r}")
    return ttl


def _arity(args, lo, hi, op):
    if not lo <= len(args) <= hi:
        raise CallError(f"{op} takes {lo}-{hi} arguments, got {len(args)}")


# The kv ops take the route's key prefix (RuntimeSpec.store_prefix: "" for a
# shared_store route); the script never sees it, in any language.
async def _get(store: Store, args, prefix):
    _arity(args, 1, 1, "kv.get")
    return await store.get(prefix + _key(args))


async def _set(store: Store, args, prefix):
    _arity(args, 2, 3, "kv.set")
    await store.set(prefix + _key(args), args[1], _ttl(args, 2))
    return None


async def _delete(store: Store, args, prefix):
    _arity(args, 1, 1, "kv.delete")
    return await store.delete(prefix + _key(args))


async def _incr(store: Store, args, prefix):
    _arity(args, 1, 3, "kv.incr")
    delta = args[1] if len(args) > 1 and args[1] is not None else 1
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise CallError(f"delta must be an integer, got {delta!r}")
    key = _key(args)
    try:
        return await store.incr(prefix + key, delta, _ttl(args, 2))
    except StoreError as e:   # name the key as the script wrote it, without the prefix
        raise CallError(str(e).replace(repr(prefix + key), repr(key))) from None


async def _registrar_lookup(store: Store, args, _prefix):
    _arity(args, 1, 1, "registrar.lookup")
    aor = args[0]
    if (not isinstance(aor, str) or not aor.startswith(("sip:", "sips:")) or "@" not in aor
            or any(c in aor for c in "\r\n")):
        raise CallError(f"aor must be a sip: or sips: URI with a user part, got {aor!r}")
    # Imported here: host.services.location needs the registrar (host.sip),
    # which the kv ops (and the runtimes importing this table) do not.
    try:
        from host.services.location import binding_records
    except ImportError as e:   # a build without the registrar: the call's error, not the session's
        raise CallError(f"the registrar is not available ({e})") from None
    try:
        return await binding_records(store, aor)
    except ValueError as e:   # an AoR the registrar cannot parse
        raise CallError(f"bad aor {aor!r}: {e}") from None


async def _dialog_count(store: Store, args, _prefix):
    _arity(args, 1, 2, "dialog.count")
    profile = args[0]
    key = args[1] if len(args) > 1 and args[1] is not None else ""
    # The limits of the add_profile verb: a name no call can be counted in is refused.
    if not isinstance(profile, str) or not 1 <= len(profile) <= 128:
        raise CallError(f"profile must be a string of 1-128 characters, got {profile!r}")
    if not isinstance(key, str) or len(key) > 256:
        raise CallError(f"key must be a string of at most 256 characters or null, got {key!r}")
    return await store.profile_count(profile, key)


OPS = {
    "kv.get": _get,
    "kv.set": _set,
    "kv.delete": _delete,
    "kv.incr": _incr,
    "registrar.lookup": _registrar_lookup,
    "dialog.count": _dialog_count,
}


async def perform(store: Store, op: str, args: list, *, key_prefix: str):
    """Run one call of a route whose store keys live under `key_prefix`
    (RuntimeSpec.store_prefix); raises CallError with the message for the
    worker. The one place where the host serves a script's store calls:
    in-process Lua and every line-JSON runtime (stdio, TCP) come here."""
    fn = OPS.get(op)
    if fn is None:
        raise CallError(f"unknown op {op!r}")
    try:
        return await fn(store, args, key_prefix)
    except StoreError as e:
        raise CallError(str(e)) from None
