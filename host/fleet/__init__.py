"""Several core processes on one host (`babelsip run --workers N`).

The parent binds every listening socket before any worker exists, then
starts N workers (`python -m host run ...` again, told by the environment
which descriptors it inherited) and supervises them. No transaction or
dialog state is shared: each worker owns the Call-IDs that hash to it
(`ownership.py`), and a message that lands on another worker is handed to
its owner over a local socket pair (`handoff.py`), one extra hop. Replies
leave from the public port, because every worker holds a socket bound to it.

- UDP: one socket per worker in a SO_REUSEPORT group on the public address;
  the kernel gives each datagram to the worker its source address hashes to
  (`steering.py`), so per-source flood limits hold across workers.
- TCP, TLS, WS and WSS: one listening socket per worker in a SO_REUSEPORT
  group per address, steered the same way (each worker runs the TLS
  handshake and the WebSocket upgrade of the connections it accepts). A
  connection lives in the worker that accepted (or opened) it; the others
  learn who holds which connection, by transport and remote address, and
  send through the holder.
- Store: registrations, nonce counts, dialogs and script data go through the
  shared store: Redis when `--store` names one, else an LMDB directory the
  parent creates and removes (host/storage/lmdb.py).
"""
