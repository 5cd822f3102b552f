"""Writes the message corpus: valid/*.sip and invalid/*.sip, byte-exact.

Run `python tests/sip/corpus/build.py` from anywhere; it rewrites every file
from the messages below. Messages are written here with LF line ends and
stored with CRLF (RFC 3261 §7), except where a message says otherwise. In a
message, `$CL` becomes the byte length of the body, and `$BODY` marks where the
header block ends (the empty line is added). Invalid files start with the
status the proxy must answer (400, 416, 420, 505, 513) or `none` when no
answer is possible.

Messages are written from the rules of RFC 3261 §7, §20, §25 in the spirit of
RFC 4475's torture tests; none is copied from it.
"""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent

SDP = """v=0
o=alice 2890844526 2890844526 IN IP4 192.0.2.101
s=-
c=IN IP4 192.0.2.101
t=0 0
m=audio 49172 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# The headers most messages share, so each case shows only what it is about.
VIA = "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
FROM = "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774"
TO = "To: Bob <sip:bob@biloxi.example.com>"
CALL_ID = "Call-ID: a84b4c76e66710@pc33.atlanta.example.com"
MF = "Max-Forwards: 70"


def request(method="INVITE", ruri="sip:bob@biloxi.example.com", *, version="SIP/2.0",
            via=VIA, from_=FROM, to=TO, call_id=CALL_ID, cseq=None, mf=MF,
            extra=(), body="", cl="$CL"):
    """A request made of the shared headers; pass None to leave one out."""
    lines = [f"{method} {ruri} {version}"]
    for h in (via, mf, to, from_, call_id, cseq if cseq is not None else f"CSeq: 1 {method}"):
        if h:
            lines.append(h)
    lines.extend(extra)
    if cl is not None:
        lines.append(f"Content-Length: {cl}")
    return "\n".join(lines) + "\n$BODY" + body


def response(status_line="SIP/2.0 200 OK", *, extra=(), body="", cl="$CL", via=VIA,
             cseq="CSeq: 1 INVITE"):
    lines = [status_line]
    for h in (via, FROM, TO + ";tag=a6c85cf", CALL_ID, cseq):
        if h:
            lines.append(h)
    lines.extend(extra)
    if cl is not None:
        lines.append(f"Content-Length: {cl}")
    return "\n".join(lines) + "\n$BODY" + body


VALID = {
    "invite-with-sdp": request(extra=["Contact: <sip:alice@pc33.atlanta.example.com>",
                                      "Content-Type: application/sdp"], body=SDP),
    "register": request("REGISTER", "sip:registrar.biloxi.example.com",
                        to="To: Bob <sip:bob@biloxi.example.com>",
                        from_="From: Bob <sip:bob@biloxi.example.com>;tag=456248",
                        extra=["Contact: <sip:bob@192.0.2.4>;expires=7200", "Expires: 7200"]),
    "register-star-contact": request("REGISTER", "sip:registrar.biloxi.example.com",
                                     extra=["Contact: *", "Expires: 0"]),
    "options-minimal": request("OPTIONS", "sip:biloxi.example.com", mf=None),
    "ack": request("ACK", cseq="CSeq: 1 ACK"),
    "cancel": request("CANCEL"),
    "bye-in-dialog": request("BYE", "sip:alice@pc33.atlanta.example.com",
                             to="To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
                             cseq="CSeq: 231 BYE",
                             extra=["Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>"]),
    "unknown-method": request("NEWMETHOD", extra=["X-Unknown: yes"]),
    "unknown-method-odd-token": request("a.b-c!d%e*f_g+h`i'j~k"),
    "compact-forms": "\n".join([
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKcompact",
        "f: <sip:alice@atlanta.example.com>;tag=88sja8x",
        "t: sip:bob@biloxi.example.com",
        "i: 0ha0isndaksdjasdf3234nas@compact",
        "CSeq: 8 INVITE",
        "m: <sip:alice@pc33.atlanta.example.com>",
        "s: compact subject",
        "k: 100rel, timer",
        "c: application/sdp",
        "l: $CL",
        "$BODY" + SDP]),
    "folded-lines": "\n".join([
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "Via  : SIP  /   2.0",
        "  /UDP",
        "\tpc33.atlanta.example.com  ;  branch=z9hG4bKfolded",
        FROM, TO, CALL_ID, "CSeq: 1", "  INVITE",
        "Subject: a subject",
        "  folded over",
        "\tthree lines",
        "Content-Length: $CL",
        "$BODY"]),
    "unusual-whitespace": "\n".join([
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "Via:SIP/2.0/UDP pc33.atlanta.example.com ; rport ; branch = z9hG4bKspace",
        "From   :\t\"Alice\"\t<sip:alice@atlanta.example.com>  ;  tag = 11",
        "To:<sip:bob@biloxi.example.com>",
        "Call-ID:   spaced@atlanta.example.com   ",
        "CSeq:\t42\t\tINVITE",
        "Max-Forwards:   70",
        "Content-Length:   $CL  ",
        "$BODY"]),
    "mixed-case-names": "\n".join([
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "VIA: SIP/2.0/udp pc33.atlanta.example.com;BRANCH=z9hG4bKcase",
        "fRoM: <sip:alice@atlanta.example.com>;TAG=x1",
        "TO: <sip:bob@biloxi.example.com>",
        "cAlL-iD: case@atlanta.example.com",
        "cseq: 3 INVITE",
        "CONTENT-length: $CL",
        "$BODY"]),
    "via-comma-list": request(via="Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKa1, "
                                  "SIP/2.0/TCP p2.example.com:5070;branch=z9hG4bKa2,"
                                  "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKa3",
                              extra=["Via: SIP/2.0/UDP last.example.com;branch=z9hG4bKa4"]),
    "record-route-list-with-quotes": request(extra=[
        'Record-Route: "Proxy, One" <sip:p1.example.com;lr>, <sip:p2.example.com;lr;x=a,b>',
        'Record-Route: <sip:[2001:db8::1]:5070;lr>']),
    "quoted-display-escapes": request(
        from_='From: "Alice \\"the boss\\", <Ltd.>; \\\\x" <sip:alice@atlanta.example.com>;tag=q1',
        to='To: "" <sip:bob@biloxi.example.com>'),
    "addr-spec-with-header-params": request(
        from_="From: sip:alice@atlanta.example.com;tag=spec1",
        to="To: sip:bob@biloxi.example.com;x-param=1"),
    "escaped-user-parts": request(
        "INVITE", "sip:%61lice%20smith@biloxi.example.com;user=phone",
        to="To: <sip:user%3Bname%40x@biloxi.example.com>",
        extra=["Contact: <sip:%2Bx%2d@192.0.2.4;transport=tcp>"]),
    "user-with-semicolon": request(
        "INVITE", "sip:bob;day=tuesday@biloxi.example.com",
        to="To: <sip:bob;day=tuesday@biloxi.example.com>"),
    "ipv6-everywhere": request(
        "INVITE", "sip:bob@[2001:db8::10]:5070;maddr=[2001:db8::11]",
        via="Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bKv6;received=2001:db8::9;rport",
        to="To: <sip:bob@[2001:db8::10]>",
        extra=["Contact: <sip:alice@[::ffff:192.0.2.1]>"]),
    "tel-uri": request("INVITE", "tel:+1-201-555-0123", to="To: <tel:+1-201-555-0123>"),
    "tel-local-with-context": request("INVITE", "tel:7042;phone-context=example.com",
                                      to="To: <tel:7042;phone-context=example.com>"),
    "sips-password-params": request(
        "INVITE", "sips:bob:secret@biloxi.example.com:5061;transport=tcp;maddr=192.0.2.1;lr;x"),
    "contact-uri-headers": request(extra=[
        "Contact: <sip:alice@pc33.atlanta.example.com?Subject=hi%20there&Priority=urgent>"]),
    "contact-quoted-param": request(extra=[
        'Contact: <sip:alice@192.0.2.4>;+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765>";'
        'q=0.7;expires=3600, "Second" <sip:alice@192.0.2.5>;q=0.1']),
    "other-scheme-in-from": request(
        from_="From: <http://www.example.com/alice>;tag=http1",
        to="To: <urn:service:sos>"),
    "long-values": request(
        call_id="Call-ID: " + "c" * 900 + "@atlanta.example.com",
        extra=["X-Long: " + "v" * 6000, "Subject: " + "word " * 300]),
    "many-headers": request(extra=[f"X-Header-{i}: value {i}" for i in range(200)]),
    "empty-header-values": request(extra=["Subject:", "X-Empty:   ", "Organization:"]),
    "utf8-text": request(from_='From: "Zoë Ærøskøbing 日本" <sip:zoe@atlanta.example.com>;tag=u8',
                         extra=["Subject: Grüße aus Köln", "X-Reason: naïve café"]),
    "max-forwards-zero": request(mf="Max-Forwards: 0"),
    "require-not-proxy-require": request(extra=["Require: 100rel", "Supported: timer"]),
    "lowercase-version": request(version="sip/2.0"),
    "cseq-leading-zeros": request(cseq="CSeq: 0009 INVITE"),
    "duplicate-equal-content-length": request(extra=["Content-Length: $CL"], body="hello"),
    "no-content-length-udp": request(cl=None, body="a body without length\n"),
    "udp-extra-bytes-dropped": request(cl="5", body="12345EXTRA BYTES AFTER THE BODY"),
    "leading-crlf": "\n\n" + request("OPTIONS", "sip:biloxi.example.com"),
    "response-200-sdp": response(extra=["Contact: <sip:bob@192.0.2.4>",
                                        "Content-Type: application/sdp"], body=SDP),
    "response-100": response("SIP/2.0 100 Trying"),
    "response-unknown-code-utf8-reason": response("SIP/2.0 499 Ungültig — unknown"),
    "response-empty-reason": response("SIP/2.0 486 "),
    "response-two-vias": response(via=VIA.replace("pc33", "proxy1") + ", " + VIA[5:]),
}

INVALID = {
    "400-missing-callid": request(call_id=None),
    "400-missing-cseq": request(cseq=""),
    "400-missing-from": request(from_=None),
    "400-missing-to": request(to=None),
    "400-two-callids": request(extra=["Call-ID: another@example.com"]),
    "400-two-from": request(extra=["From: <sip:mallory@example.com>;tag=2"]),
    "400-cseq-not-a-number": request(cseq="CSeq: abc INVITE"),
    "400-cseq-no-method": request(cseq="CSeq: 1"),
    "400-cseq-method-mismatch": request(cseq="CSeq: 1 BYE"),
    "400-cseq-too-large": request(cseq="CSeq: 2147483648 INVITE"),
    "400-cseq-unicode-digits": request(cseq="CSeq: ١٢ INVITE"),
    "400-callid-with-space": request(call_id="Call-ID: two words@example.com"),
    "400-negative-content-length": request(cl="-1"),
    "400-content-length-not-a-number": request(cl="ten"),
    "400-content-length-unicode-digit": request(cl="²", body="xx"),
    "400-conflicting-content-length": request(extra=["Content-Length: 7"], body="hello"),
    "400-body-shorter-than-content-length": request(cl="500", body="short"),
    "400-huge-content-length": request(cl="9" * 30, body="x"),
    "400-null-byte-in-header": request(extra=["Subject: a\0b"]),
    "400-control-char-in-header": request(extra=["Subject: bell\x07here"]),
    "400-bare-cr-in-header": request(extra=["Subject: a\rb"]),
    "400-space-in-header-name": request(extra=["Max Forwards: 70"]),
    "400-line-without-colon": request(extra=["This line has no colon"]),
    "400-empty-header-name": request(extra=[": value"]),
    "400-request-line-double-space": request(ruri=" sip:bob@biloxi.example.com"),
    "400-request-line-trailing-space": request(version="SIP/2.0 "),
    "400-bad-method-char": request("INV@ITE", cseq="CSeq: 1 INV@ITE"),
    "400-ruri-no-scheme": request(ruri="bob@biloxi.example.com"),
    "400-ruri-bad-escape": request(ruri="sip:al%2Gice@biloxi.example.com"),
    "400-ruri-with-headers": request(ruri="sip:bob@biloxi.example.com?Route=%3Csip:evil%3E"),
    "400-ruri-bad-port": request(ruri="sip:bob@biloxi.example.com:99999"),
    "400-ruri-bad-ipv6": request(ruri="sip:bob@[2001:db8::zz]"),
    "400-ruri-unclosed-ipv6": request(ruri="sip:bob@[2001:db8::1"),
    "400-ruri-angle-brackets": request(ruri="<sip:bob@biloxi.example.com>"),
    "400-ruri-empty-user": request(ruri="sip:@biloxi.example.com"),
    "400-from-unterminated-quote": request(from_='From: "Alice <sip:alice@atlanta.example.com>;tag=1'),
    "400-from-unclosed-angle": request(from_="From: Alice <sip:alice@atlanta.example.com;tag=1"),
    "400-from-display-without-brackets": request(from_="From: Alice sip:alice@atlanta.example.com;tag=1"),
    "400-from-space-in-uri": request(from_="From: <sip:alice @atlanta.example.com>;tag=1"),
    "400-to-addr-spec-with-query": request(to="To: sip:bob@biloxi.example.com?subject=x"),
    "400-to-star": request(to="To: *"),
    "400-to-bad-sip-uri": request(to="To: <sip:bob@bad_host-.example.com:0>"),
    "400-max-forwards-256": request(mf="Max-Forwards: 256"),
    "400-max-forwards-not-a-number": request(mf="Max-Forwards: seventy"),
    "400-two-max-forwards": request(extra=["Max-Forwards: 69"]),
    "400-bad-params-after-name-addr": request(to="To: <sip:bob@biloxi.example.com>;=oops"),
    "400-unbalanced-quote-in-contact-list": request(
        extra=['Contact: "Bob <sip:bob@192.0.2.4>, <sip:bob@192.0.2.5>']),
    "416-unknown-scheme": request(ruri="http://www.example.com/bob"),
    "416-im-scheme": request(ruri="im:bob@biloxi.example.com"),
    "420-proxy-require": request(extra=["Proxy-Require: foo, x-bar", "Proxy-Require: baz"]),
    "505-bad-version": request(version="SIP/7.0"),
    "505-version-2-1": request(version="SIP/2.1"),
    "513-too-many-headers": request(extra=[f"X-H{i}: {i}" for i in range(300)]),
    "513-header-line-too-long": request(extra=["X-Long: " + "z" * 9000]),
    "513-message-too-large": request(body="x" * 70000),
    "none-response-garbage": "SIP/2.0 OK OK OK\nthis is not a response\n$BODY",
    "none-response-bad-status-code": response("SIP/2.0 99 Too Low"),
    "none-response-status-code-1000": response("SIP/2.0 1000 Too High"),
    "none-response-bad-version": response("SIP/3.0 200 OK"),
    "none-response-missing-via": response(via=None),
    "none-response-body-short": response(cl="100", body="x"),
    "none-request-no-via": request(via=None),
    "none-request-no-via-and-bad-version": request(via=None, version="SIP/7.0"),
    "none-request-bad-top-via": request(via="Via: this is not a via"),
    "none-request-via-bad-port": request(via="Via: SIP/2.0/UDP pc33.atlanta.example.com:70000;branch=z9hG4bKp"),
    "none-binary-garbage": "\x01\x02\x03\x04 garbage without structure\n$BODY",
    "none-only-crlf": "\n\n\n",
    "none-no-header-end": "INVITE sip:bob@biloxi.example.com SIP/2.0",
}

# Messages whose bytes are not what the LF -> CRLF rule would produce.
RAW: dict[str, bytes] = {
    "valid/bare-lf-line-ends.sip": (
        b"OPTIONS sip:biloxi.example.com SIP/2.0\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKlf\n"
        b"From: <sip:alice@atlanta.example.com>;tag=lf1\n"
        b"To: <sip:biloxi.example.com>\nCall-ID: lf@atlanta.example.com\n"
        b"CSeq: 1 OPTIONS\nContent-Length: 0\n\n"),
    "invalid/400-invalid-utf8.sip": (
        b"OPTIONS sip:biloxi.example.com SIP/2.0\r\n" + VIA.encode() + b"\r\n"
        b"From: \"\xff\xfe\" <sip:alice@atlanta.example.com>;tag=bad8\r\n"
        + TO.encode() + b"\r\n" + CALL_ID.encode() + b"\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"),
}


def render(text: str) -> bytes:
    head, sep, body = text.partition("$BODY")
    body_b = body.replace("\n", "\r\n").encode("utf-8")
    head = head.replace("$CL", str(len(body_b)))
    head_b = head.replace("\n", "\r\n").encode("utf-8")
    return head_b + (b"\r\n" if sep else b"") + body_b


def main() -> None:
    for folder, table in (("valid", VALID), ("invalid", INVALID)):
        out = HERE / folder
        out.mkdir(exist_ok=True)
        for old in out.glob("*.sip"):
            old.unlink()
        for name, text in table.items():
            (out / f"{name}.sip").write_bytes(render(text))
    for rel, data in RAW.items():
        (HERE / rel).write_bytes(data)


if __name__ == "__main__":
    main()
