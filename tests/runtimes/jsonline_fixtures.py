"""Shared fixtures for the line-JSON runtime tests."""

FAST = (("ping_interval", 0.1), ("grace", 0.5))


def event(user="bob", **kw):
    """A flat on_request event as the core builds it (host/routes/verbs.py)."""
    ev = {"hook": "on_request", "method": "INVITE", "ruri": f"sip:{user}@example.com",
          "ruri_user": user, "ruri_host": "example.com", "call_id": "c1", "cseq": 1,
          "from_uri": "sip:alice@example.com", "from_tag": "t", "to_uri": f"sip:{user}@example.com",
          "to_tag": "", "source_ip": "127.0.0.1", "source_port": 5060, "transport": "udp",
          "in_dialog": False, "headers": [], "body": "", "vars": {}}
    ev.update(kw)
    return ev
