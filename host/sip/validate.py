"""Request validation a proxy does before anything else (RFC 3261 §16.3).

`parse_message` has already checked framing, the start line, header syntax,
Content-Length, Call-ID, CSeq (and that its method matches), the presence of
exactly one From and one To, and the top Via. `check_request` adds the
checks of §16.3 that need more of the message, in the RFC's order:

  1. reasonable syntax: From and To are name-addr/addr-spec with a readable
     URI, Max-Forwards is 0-255 (400);
  2. the Request-URI scheme is one we serve: sip, sips, tel (416);
  3. Max-Forwards reaching zero is the proxy's call (483), not made here;
  4. loop detection is the proxy's too (482);
  5. Proxy-Require lists no option-tag we lack (420 with Unsupported, §20.29).
"""

from __future__ import annotations

import re

from .errors import BadMessage
from .headers import parse_name_addr, parse_via, split_commas
from .message import Request
from .parser import check_via_params
from .uri import SUPPORTED_SCHEMES, URI, parse_uri

__all__ = ["check_request", "SUPPORTED_OPTION_TAGS"]

# Option-tags this proxy implements for Proxy-Require (§16.3 step 5): none yet.
SUPPORTED_OPTION_TAGS: frozenset[str] = frozenset()


def check_request(req: Request, supported: frozenset[str] = SUPPORTED_OPTION_TAGS) -> None:
    """Return None for an acceptable request, else raise BadMessage with the
    status to answer (400, 416, 420 with an Unsupported header in `.headers`)."""
    if req.via is None:
        raise BadMessage("missing Via", None)
    # One pass over the headers collects everything the checks need.
    vias: list[str] = []
    froms: list[str] = []
    tos: list[str] = []
    max_forwards: list[str] = []
    proxy_require: list[str] = []
    for key, value in req.headers:
        if key in _CHECKED:
            if key == "via":
                vias.append(value)
            elif key == "from":
                froms.append(value)
            elif key == "to":
                tos.append(value)
            elif key == "max-forwards":
                max_forwards.append(value)
            else:
                proxy_require.append(value)
    for name, values in (("from", froms), ("to", tos)):
        if len(values) != 1:
            raise BadMessage(f"{'missing' if not values else 'more than one'} {name.title()}")
        value = values[0]
        # The tag is new with every call: remember the address without it, or
        # the cache would only churn and scatter its strings over the heap. A
        # token tag at the end cannot change whether the rest is well formed.
        tag = _LAST_TAG.search(value)
        key = value[:tag.start()] if tag is not None else value
        if key not in _GOOD_ADDRESSES:
            _check_address(name, value)
            _remember(_GOOD_ADDRESSES, key)
    _check_vias(vias)
    _check_max_forwards(max_forwards)
    if req.uri not in _GOOD_REQUEST_URIS:
        ruri = parse_uri(req.uri)  # 416 for another scheme, 400 when malformed
        _check_request_uri(ruri)
        _remember(_GOOD_REQUEST_URIS, req.uri)
    if proxy_require:
        _check_proxy_require(proxy_require, supported)


_CHECKED = frozenset({"via", "from", "to", "max-forwards", "proxy-require"})

# From/To values and Request-URIs that passed their checks. Every request of
# a dialog repeats the same From, To and (remote target) Request-URI, and
# the checks are pure functions of the text, so a set lookup replaces a
# parse. Bounded, because the values come from the wire.
_GOOD_ADDRESSES: set[str] = set()
_GOOD_REQUEST_URIS: set[str] = set()
_GOOD_MAX = 4096
_LAST_TAG = re.compile(r";[ \t]*tag[ \t]*=[ \t]*[A-Za-z0-9\-.!%*_+`'~]+$", re.I)


def _remember(good: set[str], value: str) -> None:
    if len(good) >= _GOOD_MAX:
        good.clear()
    good.add(value)


def _check_address(name: str, value: str) -> None:
    addr = parse_name_addr(value)
    if addr.uri == "*":
        raise BadMessage(f"'*' is no {name.title()} address")
    scheme = addr.uri.partition(":")[0].lower()
    if scheme in SUPPORTED_SCHEMES:
        parse_uri(addr.uri)  # a sip/sips/tel URI must be well formed
    # Other schemes are legal in From/To (absoluteURI, §25.1) and were
    # already checked for shape by parse_name_addr.


def _check_vias(values: list[str]) -> None:
    """§16.3 step 1 for the whole Via list: the parser read only the top
    one, and a proxy must not relay Vias the next hop cannot read."""
    for value in values[1:]:  # the parser checked the top one, before received/rport
        parse_via(value)
        check_via_params(value)


def _check_max_forwards(values: list[str]) -> None:
    if not values:
        return  # §16.6 step 3: the proxy adds one
    if len(values) > 1:
        raise BadMessage("more than one Max-Forwards")
    value = values[0]
    # §20.22: 1*DIGIT; values above 255 are not allowed (§8.1.1.6 range).
    if not (value.isascii() and value.isdigit()) or len(value) > 3 or int(value) > 255:
        raise BadMessage(f"bad Max-Forwards {value[:20]!r}")


def _check_request_uri(ruri: URI) -> None:
    # §19.1.1 (table of URI components by use): a "?headers" part is not
    # allowed in a Request-URI; RFC 4475 §3.1.2.10 answers it with 400.
    if ruri.headers is not None:
        raise BadMessage("headers in Request-URI")


def _check_proxy_require(values: list[str], supported: frozenset[str]) -> None:
    unsupported: list[str] = []
    for value in values:
        for tag in split_commas(value):
            tag = tag.strip(" \t")
            if tag and tag.lower() not in supported and tag not in unsupported:
                unsupported.append(tag)
    if unsupported:
        listed = ", ".join(unsupported)
        raise BadMessage(f"unsupported Proxy-Require {listed[:80]!r}", 420,
                         headers=[("Unsupported", listed)])
