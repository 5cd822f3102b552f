"""A message head as the C scanner left it: bytes and offsets (_scan.c).

The scanner reports where every header line's name and value lie. Most
messages a proxy relays are only read in a few fields (the parser takes
those straight from the offsets) and sent on with one change, so building
their header list and serializing it again is most of their cost. A
`ScannedHead` keeps the received head instead: `rows()` builds the header
list only when something asks for it (message.py), and `splice()` writes the
message out by cutting the received bytes — Kamailio's way of relaying,
without its general edit lists: the one edit a relayed response needs (our
top Via removed, §16.7 step 9) is a flag.

Only heads the scanner found regular are kept this way (BS_REGULAR: no
Route, Record-Route, Contact or Path line holding a list, Via lists plain and
without empty elements, Content-Length at most once) with a plain top Via
and a plain second Via or none: so building the rows can raise nothing and
only splits Via lists (sipp's uas answers with all its Vias in one line).
The parser builds the others' header list at once, as before.
"""

from __future__ import annotations

from .errors import BadMessage
from .headers import COMPACT, TOKEN_RE, split_commas

# The layout of the scanner's output (_scan.c, enum BS_*): FIXED ints, then
# 5 per header line (id, name start, name end, value start, value end).
HEAD_END, LINE_END, COUNT, CONTENT_LENGTH = 0, 1, 2, 3
VIA1, VIA2 = 8, 9
VIA_LIST, VIA_LIST_CHECKED = -2, -3   # values of VIA2
VIA_END = 20
REGULAR = 21
FIXED = 22

# Lower-case long names of the scanner's well-known header ids; ids 1-5 are
# the SPLIT_ON_PARSE headers. tests/sip/test_speedups.py checks the C table.
SCAN_KEYS = (
    None, "via", "route", "record-route", "contact", "path", "from", "to", "call-id",
    "cseq", "content-length", "max-forwards", "content-type", "subject", "supported",
    "allow", "user-agent", "expires", "require", "proxy-require", "server", "accept",
    "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate",
    "date", "event", "allow-events", "session-expires", "p-asserted-identity", "rseq",
    "rack", "content-encoding", "refer-to", "referred-by", "timestamp", "organization",
    "min-se", "privacy", "reason", "accept-language", "accept-encoding", "warning",
    "unsupported", "retry-after", "in-reply-to", "priority", "mime-version",
    "content-disposition",
)

# Raw header name (as written before the colon) -> lower-case long key.
# Filled as names are seen; bounded, because names come from the wire.
NAMES: dict[str, str] = {}
NAMES_MAX = 2048


def learn_name(raw: str) -> str:
    name = raw.rstrip(" \t")  # HCOLON allows whitespace before the colon
    if TOKEN_RE.fullmatch(name) is None:
        raise BadMessage(f"bad header name {raw[:40]!r}")
    key = name.lower()
    key = COMPACT.get(key, key)
    if len(NAMES) < NAMES_MAX:
        NAMES[raw] = key
    return key


# Key -> scanner id, for reading one field of a kept head (not Via: lists).
SCAN_IDS = {key: i for i, key in enumerate(SCAN_KEYS) if i > 1}


def line_rows(text: str, v: list[int]) -> list[tuple[str, str]]:
    """One (key, value) row per header line, from the scanner's offsets;
    for a regular head (no list to split, see REGULAR), its header list."""
    keys, names = SCAN_KEYS, NAMES
    return [(keys[v[i]] if v[i] else names.get(text[v[i + 1]:v[i + 2]])
             or learn_name(text[v[i + 1]:v[i + 2]]), text[v[i + 3]:v[i + 4]])
            for i in range(FIXED, FIXED + 5 * v[COUNT], 5)]


class ScannedHead:
    """The received head of one message, for its header rows on demand and
    for writing it out again with its top Via removed or not."""

    __slots__ = ("data", "text", "offsets", "top_via_removed")

    def __init__(self, data: bytes, text: str, offsets: list[int]):
        self.data = data          # the message as received (leading CRLFs gone)
        self.text = text          # its head, decoded (ASCII: offsets are the same)
        self.offsets = offsets
        self.top_via_removed = False

    def rows(self) -> list[tuple[str, str]]:
        """The header list the parser would have built, minus a removed Via."""
        v = self.offsets
        rows = line_rows(self.text, v)
        if v[VIA2] == VIA_LIST_CHECKED:   # the only lists there are
            rows = [(key, part) for key, value in rows
                    for part in (split_commas(value) if key == "via" and "," in value else (value,))]
        if self.top_via_removed:
            for n, (key, _) in enumerate(rows):
                if key == "via":
                    del rows[n]
                    break
        return rows

    def values(self, key: str) -> list[str] | None:
        """Every value of the header `key` without building the rows (its
        lines are its values: no list but Via's), or None when only the rows
        can tell (Via, a name the scanner does not know)."""
        kid = SCAN_IDS.get(key)
        if kid is None:
            return None
        text, v = self.text, self.offsets
        return [text[v[i + 3]:v[i + 4]] for i in range(FIXED, FIXED + 5 * v[COUNT], 5) if v[i] == kid]

    def first(self, key: str) -> str | None | bool:
        """The first value of `key` as `values` reads it; False when only
        the rows can tell."""
        kid = SCAN_IDS.get(key)
        if kid is None:
            return False
        v = self.offsets
        try:
            at = FIXED + 5 * v[FIXED::5].index(kid, 0, v[COUNT])
        except ValueError:
            return None
        return self.text[v[at + 3]:v[at + 4]]

    def top_via(self) -> str:
        """The top Via value: its line's, or the first of its list."""
        v = self.offsets
        return self.text[v[FIXED + 5 * v[VIA1] + 3]:v[VIA_END]]

    def _top_via_cut(self) -> tuple[int, int]:
        """The bytes removing the top Via takes: its line with the CRLF
        before it, or the first element of its list up to the next one."""
        v = self.offsets
        i = FIXED + 5 * v[VIA1]
        if v[VIA_END] < v[i + 4]:   # the first of a list
            after = self.text.index(",", v[VIA_END]) + 1
            while self.text[after] in " \t":
                after += 1
            return v[i + 3], after
        resume = v[i + 6] - 2 if v[VIA1] + 1 < v[COUNT] else v[HEAD_END]
        return v[i + 1] - 2, resume

    def splice(self, start_line: str, body: bytes) -> bytes | None:
        """The message with `start_line` and `body`, its header lines as
        received; None when the received Content-Length no longer fits the
        body (the caller serializes the rows instead)."""
        data, v = self.data, self.offsets
        length = v[CONTENT_LENGTH]
        if length >= 0 and length != len(body):
            return None
        head_end = v[HEAD_END]
        parts = [start_line.encode("utf-8", "surrogateescape")]
        if self.top_via_removed:
            cut, resume = self._top_via_cut()
            parts += (data[v[LINE_END]:cut], data[resume:head_end])
        else:
            parts.append(data[v[LINE_END]:head_end])
        if length < 0:
            parts.append(b"\r\nContent-Length: %d" % len(body))
        parts += (b"\r\n\r\n", body)
        return b"".join(parts)
