"""The store's copy of the dialogs the core tracks, and their profiles.

The core (host/sip/proxy_dialogs.py) keeps the live state it needs to end a
call; what the rest of the cluster sees — the dialog records for the
management API and the profile counts behind the `dialog.count` host call —
is written here, from the `DialogChange` actions, in order, by one task, so
a slow store never holds up the core and a call's "ended" never overtakes
its "trying".
"""

from __future__ import annotations

import collections
import logging

import trio

from host.sip.actions import DialogChange
from host.sip.dialogs import ENDED, TRYING
from host.sip.proxy_dialogs import FORGET_AFTER
from host.storage import Store, StoreError

log = logging.getLogger("babelsip.dialogs")

# A record outlives its call by at most this when its end is never seen (a
# lost BYE, a core that died): the profile counts heal by themselves. The
# core forgets such a call after as long.
UNLIMITED_TTL = FORGET_AFTER
QUEUE_MAX = 100_000   # changes waiting for the store; beyond, counted and dropped
BATCH_SECONDS = 0.02  # how long a change may wait for others to be written with it


class DialogMirror:
    def __init__(self, store: Store):
        self.store = store
        # A deque drained in one go, not a channel: four changes a call, and a
        # checkpoint per change cost more than the in-memory writes themselves.
        self._queue: collections.deque[DialogChange] = collections.deque()
        self._wake = trio.Event()
        self.dropped = 0
        self.errors = 0
        self._writing = 0    # writes of the current batch not started yet
        self.coalesced = 0   # changes never written: a later one of the same batch said more

    @property
    def queued(self) -> int:
        """Changes not written yet: waiting, or in the batch being written."""
        return len(self._queue) + self._writing

    def submit(self, change: DialogChange) -> None:
        if len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.append(change)
        self._wake.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        queue = self._queue
        while True:
            await self._wake.wait()
            # Gather a batch: a wake per change (four a call) cost the core
            # more in task switches than the writes themselves.
            await trio.sleep(BATCH_SECONDS)
            self._wake = trio.Event()
            while queue:
                batch = list(queue)
                queue.clear()
                writes = coalesced(batch)
                self.coalesced += len(batch) - len(writes)
                self._writing = len(writes)
                for change, first in writes:
                    self._writing -= 1
                    try:
                        await self._apply(change, first)
                    except StoreError as exc:
                        # The store is down or refused: the core's calls go on; the
                        # next change of this dialog rewrites its record.
                        self.errors += 1
                        log.warning("dialog %s: cannot record %s: %s", change.record.get("id"),
                                    change.state, exc)
                    except Exception:
                        self.errors += 1
                        log.exception("dialog %s: cannot record %s", change.record.get("id"),
                                      change.state)

    async def _apply(self, change: DialogChange, first: bool) -> None:
        """Write one dialog's latest state; `first`: its record is new (the
        batch held its "trying"), so its profiles count it from now on."""
        record, store = change.record, self.store
        dialog_id = record["id"]
        if change.state == ENDED:
            await store.delete_dialog(dialog_id)
            for name, key in change.profiles.items():
                await store.profile_remove(name, key, dialog_id)
            return
        limit = record.get("max_duration")
        ttl = limit + 600.0 if limit else UNLIMITED_TTL
        await store.put_dialog(dialog_id, record, ttl)
        if first:
            for name, key in change.profiles.items():
                await store.profile_add(name, key, dialog_id, ttl)

    def statistics(self) -> dict:
        return {"queued": self.queued, "dropped": self.dropped, "errors": self.errors,
                "coalesced": self.coalesced}


def coalesced(changes: list[DialogChange]) -> list[tuple[DialogChange, bool]]:
    """What a batch of changes leaves to write: per dialog, only its latest
    change (a record is rewritten whole, so the earlier ones say nothing the
    last does not), with whether the batch holds its "trying" (the record
    and its profile entries are new). A dialog that began and ended within
    the batch leaves nothing: its record and profile entries would be added
    and removed again. Changes of different dialogs keep their order."""
    latest: dict = {}   # the dialog -> [its latest change, whether "trying" was seen]
    for change in changes:
        entry = latest.get(change.subject)
        if entry is None:
            latest[change.subject] = [change, change.state == TRYING]
        else:
            entry[0] = change
            entry[1] = entry[1] or change.state == TRYING
    return [(change, new) for change, new in latest.values()
            if not (new and change.state == ENDED)]
