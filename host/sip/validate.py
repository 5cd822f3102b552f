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

from .errors import BadMessage
from .headers import parse_name_addr, split_commas
from .message import Request
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
    found: dict[str, list[str]] = {"from": [], "to": [], "max-forwards": [], "proxy-require": []}
    for key, value in req.headers:
        bucket = found.get(key)
        if bucket is not None:
            bucket.append(value)
    for name in ("from", "to"):
        values = found[name]
        if len(values) != 1:
            raise BadMessage(f"{'missing' if not values else 'more than one'} {name.title()}")
        _check_address(name, values[0])
    _check_max_forwards(found["max-forwards"])
    ruri = parse_uri(req.uri)  # 416 for another scheme, 400 when malformed
    _check_request_uri(ruri)
    if found["proxy-require"]:
        _check_proxy_require(found["proxy-require"], supported)


def _check_address(name: str, value: str) -> None:
    addr = parse_name_addr(value)
    if addr.uri == "*":
        raise BadMessage(f"'*' is no {name.title()} address")
    scheme = addr.uri.partition(":")[0].lower()
    if scheme in SUPPORTED_SCHEMES:
        parse_uri(addr.uri)  # a sip/sips/tel URI must be well formed
    # Other schemes are legal in From/To (absoluteURI, §25.1) and were
    # already checked for shape by parse_name_addr.


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
