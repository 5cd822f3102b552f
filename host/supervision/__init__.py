"""Supervision: restart policy as data and the pure decision over it.

The mechanism (starting runtimes, deadlines, fallbacks) lives with its users,
the route registry (`host.routes`) and the worker pool
(`runtimes.jsonline.pool`); this package only decides.
"""

from host.supervision.policy import (GIVE_UP, RESTART, RestartPlan, RestartPolicy, Verdict, backoff_delay,
                                     decide_restart, next_retry, plan_restart)

__all__ = ["GIVE_UP", "RESTART", "RestartPlan", "RestartPolicy", "Verdict", "backoff_delay",
           "decide_restart", "next_retry", "plan_restart"]
