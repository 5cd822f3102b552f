"""The services the core offers every route (DESIGN.md "Services"): registrar
and location, digest authentication, NAT keepalive, dialogs.

The RFC rules are sans-IO modules in host/sip/ (registrar.py, digest.py,
nat.py, keepalive.py, dialogs.py); what lives here is the async glue that
runs them against the store (host/storage) for the shell.
"""
