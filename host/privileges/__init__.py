"""Privileges: the server's uid drop after binding, and the jail every route
worker process starts in (no root, no new privileges, optional Landlock and
no-network confinement per route). README "Privileges"."""
