"""A replica's memory of authenticated callers, valid only under the store's credential generation (see
``store.credential_generation``) that it was read under.

``GenerationReads.current()`` answers with a generation read that started at most ``MAX_AGE_S`` before the
call (at most one read in flight; calls arriving together share it), so the cheap path costs about ten
indexed reads a second per replica however many devices sync. Every revocation answers its caller only
``MAX_AGE_S`` after its transaction committed (``settle()``), so any call made after the revocation's answer,
on any replica, reads a generation that includes it and is refused: "on the next call" holds causally
without a read per call. ``CredentialCache`` keeps principals tagged with that generation and forgets them
all when it moves (revocations are rare; a Sync storm is not).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from edgefleet_controller.auth.principals import Principal

#: How old a generation read may be when a call uses it; every revocation waits this long before answering.
MAX_AGE_S: Final = 0.1
#: A cache this large is cleared rather than grown (a credential-spraying caller cannot fill memory).
MAX_ENTRIES: Final = 100_000


async def settle() -> None:
    """Wait until every replica's next generation read starts after a revocation that just committed."""
    await asyncio.sleep(MAX_AGE_S)


class GenerationReads:
    """The credential generation as read at most ``MAX_AGE_S`` before the call; one read in flight at a time."""

    def __init__(self, read: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._value: int | None = None
        self._value_started = float("-inf")  # when the read that gave ``_value`` started
        self._in_flight: tuple[float, asyncio.Future[int]] | None = None
        self._task: asyncio.Task[None] | None = None  # the read in flight (kept: the loop holds tasks weakly)
        # its own thread: a read never queues behind the default executor's store work
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="credential-generation")

    async def current(self) -> int:
        oldest = self._clock() - MAX_AGE_S
        if self._value is not None and self._value_started >= oldest:
            return self._value
        while self._in_flight is not None:
            started, future = self._in_flight
            if started >= oldest:
                return await asyncio.shield(future)
            await asyncio.shield(future)  # too old for this call: wait for it to end, then read again
            if self._value is not None and self._value_started >= oldest:
                return self._value
        started, future = self._clock(), asyncio.get_running_loop().create_future()
        self._in_flight = started, future
        self._task = asyncio.ensure_future(self._run(started, future))
        return await asyncio.shield(future)

    async def _run(self, started: float, future: asyncio.Future[int]) -> None:
        try:
            value = await asyncio.get_running_loop().run_in_executor(self._thread, self._read)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # the callers see the store's error (e.g. UNAVAILABLE)
            future.set_exception(exc)
        else:
            if started >= self._value_started:
                self._value, self._value_started = value, started
            future.set_result(value)
        finally:
            self._in_flight = None


class CredentialCache:
    """Principals by credential hash, for the newest credential generation seen."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._entries: dict[str, Principal] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str, generation: int) -> Principal | None:
        """The principal cached under ``generation``; a newer generation empties the cache first, an older one
        (a call that read before a newer read finished) finds nothing and changes nothing."""
        if self._generation is None or generation > self._generation:
            self._entries.clear()
            self._generation = generation
            return None
        if generation < self._generation:
            return None
        return self._entries.get(self._key(token))

    def put(self, token: str, principal: Principal, generation: int) -> None:
        if generation != self._generation:
            return  # read under another generation than the cache now holds: not kept
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[self._key(token)] = principal
