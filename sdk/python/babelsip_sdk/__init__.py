"""babelsip Python SDK: write a route as a plain Python file.

    def on_request(req):
        if req.ruri_user == "echo":
            return req.reply(200, "OK")
        req.record_route()
        req.relay("sip:backend.example.net")

The runner (`python -m babelsip_sdk.runner route.py`, started by the host)
speaks the line-JSON protocol of sdk/PROTOCOL.md on stdin/stdout;
`python -m babelsip_sdk serve --listen HOST:PORT route.py` serves the same
route to hosts connecting over TCP.
"""

from babelsip_sdk.request import Dialog, Registrar, Reply, Request, Store, StoreError, VerbError
from babelsip_sdk.session import log

__version__ = "0.1.0"
__all__ = ["Request", "Reply", "Store", "Registrar", "Dialog", "StoreError", "VerbError", "log",
           "__version__"]
