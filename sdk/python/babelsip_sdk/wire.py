"""JSON lines: orjson when installed, the standard library otherwise."""

try:
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj) + b"\n"

    loads = orjson.loads
    JSON_LIB = "orjson"
except ImportError:  # pragma: no cover - exercised by the plain-json CI leg
    import json

    _enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(obj) -> bytes:
        return _enc.encode(obj).encode() + b"\n"

    def loads(data):
        return json.loads(data)

    JSON_LIB = "json"

# Must match the host's limit announced in hello.settings.max_line.
DEFAULT_MAX_LINE = 1 << 20
