"""The credential cache's freshness rule: a call uses a generation read that started at most ``MAX_AGE_S``
before it (shared with the calls around it), never an older one, and a moved generation forgets everyone."""

from __future__ import annotations

import asyncio
import threading

from edgefleet_controller.auth.credential_cache import MAX_AGE_S, CredentialCache, GenerationReads
from edgefleet_controller.auth.principals import Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_calls_share_a_fresh_read_and_an_older_one_is_never_used() -> None:
    clock, generation, reads = Clock(), [7], []

    def read() -> int:
        reads.append(clock.now)
        return generation[0]

    gen = GenerationReads(read, clock)
    assert await asyncio.gather(*(gen.current() for _ in range(50))) == [7] * 50
    assert len(reads) == 1  # fifty concurrent calls, one read
    clock.now += MAX_AGE_S / 2
    assert await gen.current() == 7 and len(reads) == 1  # still fresh enough
    generation[0] = 8  # a revocation commits...
    clock.now += MAX_AGE_S  # ...and answers MAX_AGE_S later: the next call must see it
    assert await gen.current() == 8 and len(reads) == 2


async def test_a_read_in_flight_since_before_the_bound_is_not_used() -> None:
    clock, release, generation = Clock(), threading.Event(), [1]

    def read() -> int:
        value = generation[0]
        release.wait(5)
        return value

    gen = GenerationReads(read, clock)
    slow = asyncio.ensure_future(gen.current())  # reads 1, then hangs
    await asyncio.sleep(0.05)
    generation[0] = 2
    clock.now += 2 * MAX_AGE_S  # the in-flight read began too long before the next call
    late = asyncio.ensure_future(gen.current())
    await asyncio.sleep(0.05)
    release.set()
    assert await slow == 1
    assert await late == 2  # it waited for a read of its own


def test_cache_forgets_everyone_when_the_generation_moves() -> None:
    cache = CredentialCache()
    device = Principal("device", "dev_1", "cam-1", site="lab")
    assert cache.get("edc_dev_1.s", 3) is None
    cache.put("edc_dev_1.s", device, 3)
    assert cache.get("edc_dev_1.s", 3) == device
    assert cache.get("edc_dev_1.s", 2) is None  # a call holding an older read finds nothing...
    assert cache.get("edc_dev_1.s", 3) == device  # ...and changes nothing
    assert cache.get("edc_dev_1.s", 4) is None  # a newer generation: everyone is read again
    cache.put("edc_dev_1.s", device, 3)  # a lookup made under the old generation is not kept
    assert cache.get("edc_dev_1.s", 4) is None
