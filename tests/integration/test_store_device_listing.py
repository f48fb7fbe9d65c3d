"""Device listing in the store, on SQLite and PostgreSQL: every filter (site, several tags, bundle, the shown
health with ``offline`` computed from last_seen) is applied in the query, before paging, so pages are full until
the last, ``count`` is the number of all matches, and the keyset token neither skips nor repeats a device when
devices enroll between pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from edgefleet_controller.store import Store
from tests.integration.store_cases import T0, sha

pytestmark = pytest.mark.integration

NOW = T0 + timedelta(minutes=10)
OFFLINE_BEFORE = NOW - timedelta(minutes=2)
DOCK = {1, 4, 8, 12, 17, 21, 24}  # positions in id order: spread from the first page to the last


def pages(store: Store, page_size: int, **filters: Any) -> list[list[str]]:
    """Every page's device ids, following the tokens."""
    out: list[list[str]] = []
    token: str | None = None
    while len(out) < 50:
        page, token = store.devices.page(page_size=page_size, page_token=token, **filters)
        out.append([d.id for d in page])
        if token is None:
            return out
    raise AssertionError(f"no last page after 50 pages: {out[:3]}...")


def fleet(store: Store) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """25 devices over 2 sites; by position i in id order: tags, health and last report mixed."""
    secrets = {site: store.enrollment_tokens.create(site, 3600, T0)[1] for site in ("north", "south")}
    enrolled = [
        store.devices.enroll(secrets["north" if n % 2 else "south"], f"cam-{n}", "x86-avx2", {}, {}, T0)[0]
        for n in range(25)
    ]
    ids = sorted(d.id for d in enrolled)
    facts: dict[str, dict[str, Any]] = {}
    for i, device_id in enumerate(ids):
        tags = {"camera": "rgb", **({"zone": "dock"} if i in DOCK else {})}
        store.devices.set_tags(device_id, tags)
        health = "failing" if i % 4 == 0 else "serving"
        seen = NOW if i % 3 == 0 else T0  # not seen for 10 minutes: shown offline
        store.devices.record_report(device_id, {"health": health, "running_bundle": sha(str(i % 2))}, seen)
        site = store.devices.get(device_id).site
        shown = health if seen > OFFLINE_BEFORE else "offline"
        facts[device_id] = {"i": i, "site": site, "tags": tags, "shown": shown, "bundle": sha(str(i % 2))}
    return ids, facts


def test_pages_are_full_until_the_last_and_count_is_all_matches(store: Store) -> None:
    ids, facts = fleet(store)

    def sizes(page_size: int, **filters: Any) -> list[int]:
        got = pages(store, page_size, **filters)
        flat = [d for p in got for d in p]
        want = [d for d in ids if all(match(facts[d], k, v) for k, v in filters.items())]
        assert flat == want, filters  # in id order, nothing missing, nothing twice
        assert store.devices.count(**filters) == len(want)
        assert all(len(p) == page_size for p in got[:-1]), f"a short page before the last: {filters}"
        return [len(p) for p in got]

    def match(f: dict[str, Any], key: str, value: Any) -> bool:
        match key:
            case "site":
                return bool(f["site"] == value)
            case "tags":
                return all(f["tags"].get(k) == v for k, v in (t.split("=") for t in value))
            case "health":
                return bool(f["shown"] == value)
            case "bundle":
                return bool(f["bundle"] == value)
            case "offline_before":
                return True
        raise AssertionError(key)

    assert sizes(10) == [10, 10, 5]
    assert sizes(5, tags=["zone=dock"]) == [5, 2]
    assert sizes(10, tags=["camera=rgb", "zone=dock"]) == [7]
    assert sizes(3, tags=["zone=dock", "camera=thermal"]) == [0]
    # shown health: failing and seen recently (i % 12 == 0: 3), offline (not i % 3 == 0: 16)
    assert sizes(2, health="failing", offline_before=OFFLINE_BEFORE) == [2, 1]
    assert sizes(10, health="offline", offline_before=OFFLINE_BEFORE) == [10, 6]
    assert sizes(4, health="serving", offline_before=OFFLINE_BEFORE) == [4, 2]
    # sites are drawn across the id order; sizes() checks the matches, the count and full pages
    assert sum(sizes(5, site="north")) == 12
    sizes(3, site="south", health="offline", offline_before=OFFLINE_BEFORE)
    assert sizes(3, tags=["zone=dock"], bundle=sha("0"), health="offline", offline_before=OFFLINE_BEFORE)
    # without offline_before the stored health is meant (the old meaning, used by the controller's own scans)
    assert store.devices.count(health="failing") == 7


def test_devices_enrolling_between_pages_are_neither_skipped_nor_repeated(store: Store) -> None:
    ids, _ = fleet(store)
    _, secret = store.enrollment_tokens.create("north", 3600, T0)
    first, token = store.devices.page(page_size=10)
    assert [d.id for d in first] == ids[:10] and token is not None
    seen = [d.id for d in first]
    added: dict[str, str] = {}  # new device id -> the cursor (last id listed) when it enrolled
    while token is not None:
        for k in (0, 1):
            late = store.devices.enroll(secret, f"late-{len(added)}-{k}", "x86-avx2", {}, {}, NOW)[0].id
            added[late] = seen[-1]
        page, token = store.devices.page(page_size=10, page_token=token)
        assert len(page) == 10 or token is None
        seen += [d.id for d in page]
    assert len(seen) == len(set(seen)), "a device came back twice"
    assert set(ids) <= set(seen), "an enrolled device was skipped"
    assert seen == sorted(seen)
    # a device enrolled ahead of the cursor is listed; one behind it is for the next listing
    assert {d for d, cursor in added.items() if d > cursor} == set(added) & set(seen)
    assert store.devices.count() == 25 + len(added)
