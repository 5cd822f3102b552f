"""Supervision: restart policy as data and the pure decision over it.

The mechanism (starting runtimes, deadlines, fallbacks) lives with its user,
`host.routes.registry`; this package only decides.
"""

from host.supervision.policy import GIVE_UP, RESTART, RestartPolicy, Verdict, decide_restart, next_retry

__all__ = ["GIVE_UP", "RESTART", "RestartPolicy", "Verdict", "decide_restart", "next_retry"]
