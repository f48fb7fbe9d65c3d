"""The controller store's devices: enrollment, reports, listing with filters, desired state, events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from edgefleet_controller.store import UNSET, EventInput, Store
from edgefleet_controller.store.errors import InvalidArgument, InvalidPageToken, NotFound, TokenExpired, TokenRejected
from tests.integration.store_cases import T0, enroll, publish, sha

pytestmark = pytest.mark.integration


# ---- devices ------------------------------------------------------------------------------------------


def test_enroll_creates_device_in_token_site_with_credential(store: Store) -> None:
    token, secret = store.enrollment_tokens.create("paris", 60, T0)
    device, credential = store.devices.enroll(
        secret, "dock-cam", "jetson-orin-nano", {"gpu": "sm_87"}, {"zone": "dock"}, T0
    )
    assert device.id.startswith("dev_")
    assert credential.startswith(f"edc_{device.id}.")
    assert (device.site, device.name, device.hardware_class) == ("paris", "dock-cam", "jetson-orin-nano")
    assert device.facts == {"gpu": "sm_87"}
    assert device.tags == {"zone": "dock"}
    assert (device.health, device.running_bundle, device.last_seen) == ("unknown", None, T0)
    assert device.enrollment_token_id == token.id
    assert store.enrollment_tokens.get(token.id).uses == 1
    assert store.devices.get(device.id) == device
    desired = store.desired.get(device.id)
    assert (desired.revision, desired.bundle_digest, desired.config_digest) == (0, None, None)


def test_enrollment_with_a_rejected_token_creates_nothing(store: Store) -> None:
    _, secret = store.enrollment_tokens.create("paris", 60, T0)
    with pytest.raises(TokenExpired):
        store.devices.enroll(secret, "cam", "x86-avx2", {}, {}, T0 + timedelta(hours=1))
    with pytest.raises(TokenRejected):
        store.devices.enroll("eft_x.y", "cam", "x86-avx2", {}, {}, T0)
    assert store.devices.page() == ([], None)


@pytest.mark.parametrize(
    ("name", "tags", "facts", "message"),
    [
        ("", {}, {}, "device name"),
        ("cam", {"a=b": "c"}, {}, "must not contain '='"),
        ("cam", {"a": 3}, {}, "string value"),
        ("cam", {}, {"bad": object()}, "JSON-serialisable"),
    ],
)
def test_enroll_arguments_are_checked(
    store: Store, name: str, tags: dict[str, Any], facts: dict[str, Any], message: str
) -> None:
    record, secret = store.enrollment_tokens.create("paris", 60, T0)
    with pytest.raises(InvalidArgument, match=message):
        store.devices.enroll(secret, name, "x86-avx2", facts, tags, T0)
    assert store.enrollment_tokens.get(record.id).uses == 0


def test_authenticate_device(store: Store) -> None:
    device_id, credential = enroll(store)
    other_id, _ = enroll(store)
    access = store.device_access.check(credential)
    assert access is not None and access.device_id == device_id
    assert store.device_access.check(credential + "x") is None
    assert store.device_access.check(credential.replace(device_id, other_id)) is None
    assert store.device_access.check("edc_dev_nobody.secret") is None
    assert store.device_access.check("garbage") is None
    assert store.device_access.check("") is None


def test_set_device_tags_replaces_tags_and_the_filter_follows(store: Store) -> None:
    device_id, _ = enroll(store, tags={"line": "1", "zone": "dock"})
    updated = store.devices.set_tags(device_id, {"line": "2"})
    assert updated.tags == {"line": "2"}
    assert store.devices.get(device_id).tags == {"line": "2"}
    assert store.devices.page(tag="line=1")[0] == []
    assert store.devices.page(tag="zone=dock")[0] == []
    assert [d.id for d in store.devices.page(tag="line=2")[0]] == [device_id]
    with pytest.raises(NotFound):
        store.devices.set_tags("dev_ghost", {})
    with pytest.raises(InvalidArgument):
        store.devices.set_tags(device_id, {"": "x"})


def test_unknown_device_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="device 'dev_nobody' not found"):
        store.devices.get("dev_nobody")
    with pytest.raises(NotFound):
        store.desired.get("dev_nobody")
    with pytest.raises(NotFound):
        store.devices.record_report("dev_nobody", {}, T0)


def test_record_report_stores_state_and_returns_desired(store: Store) -> None:
    device_id, _ = enroll(store)
    digest = publish(store)
    store.desired.assign([device_id], bundle_digest=digest, reason="r", now=T0)
    reported = {
        "running_bundle": sha("old"),
        "health": "degraded",
        "update_state": "canary",
        "slots": {"a": {"bundle": sha("old"), "state": "committed"}, "b": {"bundle": digest}},
        "providers": ["CPUExecutionProvider"],
    }
    desired = store.devices.record_report(device_id, reported, T0 + timedelta(minutes=5))
    assert desired.bundle_digest == digest
    device = store.devices.get(device_id)
    assert device.reported == reported
    assert (device.health, device.running_bundle) == ("degraded", sha("old"))
    assert device.last_seen == T0 + timedelta(minutes=5)
    # a late report from an earlier moment never moves last_seen back
    store.devices.record_report(device_id, {"health": "healthy"}, T0 + timedelta(minutes=1))
    device = store.devices.get(device_id)
    assert device.last_seen == T0 + timedelta(minutes=5)
    assert (device.health, device.running_bundle) == ("healthy", None)


@pytest.mark.parametrize(
    ("reported", "message"),
    [
        ({"running_bundle": "v1"}, "running_bundle"),
        ({"slots": {"a": {"bundle": "../x"}}}, "slot 'a'"),
        ({"slots": ["a"]}, "slots"),
        ({"health": 5}, "health"),
    ],
)
def test_record_report_refuses_malformed_indexed_fields(store: Store, reported: dict[str, Any], message: str) -> None:
    device_id, _ = enroll(store)
    with pytest.raises(InvalidArgument, match=message):
        store.devices.record_report(device_id, reported, T0)


def test_list_devices_paginates_250_devices_with_filters(store: Store) -> None:
    sites = ["berlin", "paris", "oslo"]
    bundles = [sha("b1"), sha("b2")]
    tokens = {site: store.enrollment_tokens.create(site, 3600, T0)[1] for site in sites}
    expected: dict[str, dict[str, Any]] = {}
    for i in range(250):
        site = sites[i % 3]
        tags = {"line": str(i % 4)} if i % 5 else {}
        device, _ = store.devices.enroll(tokens[site], f"cam-{i}", "x86-avx2", {}, tags, T0)
        seen = T0 + timedelta(minutes=i % 10)
        health = "healthy" if i % 7 else "failing"
        store.devices.record_report(device.id, {"running_bundle": bundles[i % 2], "health": health}, seen)
        expected[device.id] = {
            "site": site,
            "tags": tags,
            "bundle": bundles[i % 2],
            "health": health,
            "seen": seen,
        }

    def collect(page_size: int, **filters: Any) -> list[str]:
        ids: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            page, token = store.devices.page(page_size=page_size, page_token=token, **filters)
            assert len(page) <= page_size
            ids.extend(d.id for d in page)
            pages += 1
            if token is None:
                return ids
            assert pages < 300

    everything = collect(40)
    assert everything == sorted(expected)
    assert collect(1000) == everything

    def want(predicate: Any) -> list[str]:
        return sorted(i for i, facts in expected.items() if predicate(facts))

    assert collect(17, site="paris") == want(lambda f: f["site"] == "paris")
    assert collect(17, tag="line=2") == want(lambda f: f["tags"].get("line") == "2")
    assert collect(17, bundle=bundles[1]) == want(lambda f: f["bundle"] == bundles[1])
    assert collect(17, health="failing") == want(lambda f: f["health"] == "failing")
    cutoff = T0 + timedelta(minutes=7)
    assert collect(17, seen_since=cutoff) == want(lambda f: f["seen"] >= cutoff)
    combined = collect(9, site="oslo", tag="line=1", bundle=bundles[1], health="healthy")
    assert combined == want(
        lambda f: (
            f["site"] == "oslo"
            and f["tags"].get("line") == "1"
            and f["bundle"] == bundles[1]
            and f["health"] == "healthy"
        )
    )
    assert combined
    assert collect(10, tag="line=9") == []

    summary = store.devices.site_summary()
    assert sorted(summary) == sorted(sites)
    for site in sites:
        in_site = [f for f in expected.values() if f["site"] == site]
        assert summary[site].devices == len(in_site)
        assert summary[site].by_bundle == {b: sum(f["bundle"] == b for f in in_site) for b in bundles}
        assert summary[site].by_health == {
            h: n for h in ("healthy", "failing") if (n := sum(f["health"] == h for f in in_site))
        }


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"page_token": "not-a-token"}, InvalidPageToken),
        ({"page_token": "eyJ2IjoyfQ"}, InvalidPageToken),
        ({"tag": "line"}, InvalidArgument),
        ({"bundle": "v1"}, InvalidArgument),
        ({"page_size": 0}, InvalidArgument),
        ({"page_size": 5000}, InvalidArgument),
    ],
)
def test_list_devices_refuses_bad_arguments(store: Store, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        store.devices.page(**kwargs)


# ---- desired state ------------------------------------------------------------------------------------


def test_set_desired_bumps_revisions_only_on_change(store: Store) -> None:
    a, _ = enroll(store)
    b, _ = enroll(store)
    digest = publish(store)
    assert store.desired.assign([a, b], bundle_digest=digest, reason="wave 1", now=T0, rollout_id="ro_1") == {
        a: 1,
        b: 1,
    }
    assert store.desired.change_counter() == 1
    # a no-op: same bundle again, counter untouched
    assert store.desired.assign([a, b], bundle_digest=digest, reason="again", now=T0) == {a: 1, b: 1}
    assert store.desired.change_counter() == 1
    assert store.desired.get(a).reason == "wave 1"

    assert store.desired.assign([a], config_digest=sha("cfg"), reason="config", now=T0 + timedelta(seconds=1)) == {a: 2}
    desired_a = store.desired.get(a)
    assert (desired_a.bundle_digest, desired_a.config_digest, desired_a.revision) == (digest, sha("cfg"), 2)
    assert (desired_a.rollout_id, desired_a.change_seq) == (None, 2)
    assert desired_a.updated_at == T0 + timedelta(seconds=1)

    assert [(d.device_id, d.change_seq) for d in store.desired.changes_since(1)] == [(a, 2)]
    assert {d.device_id for d in store.desired.changes_since(0)} == {a, b}

    # None clears; UNSET leaves alone
    store.desired.assign([b], bundle_digest=None, config_digest=UNSET, reason="clear", now=T0)
    assert store.desired.get(b).bundle_digest is None
    assert store.desired.get(b).revision == 2


def test_set_desired_is_all_or_nothing(store: Store) -> None:
    a, _ = enroll(store)
    digest = publish(store)
    with pytest.raises(NotFound, match="dev_ghost"):
        store.desired.assign([a, "dev_ghost"], bundle_digest=digest, reason="r", now=T0)
    assert store.desired.get(a).revision == 0
    with pytest.raises(NotFound, match="publish the bundle"):
        store.desired.assign([a], bundle_digest=sha("unpublished"), reason="r", now=T0)
    with pytest.raises(InvalidArgument, match="nothing to change"):
        store.desired.assign([a], reason="r", now=T0)
    with pytest.raises(InvalidArgument, match="config_digest"):
        store.desired.assign([a], config_digest="latest", reason="r", now=T0)
    assert store.desired.change_counter() == 0


# ---- events -------------------------------------------------------------------------------------------


def test_events_are_stored_deduplicated_and_listed(store: Store) -> None:
    a, _ = enroll(store)
    b, _ = enroll(store)
    batch = [
        EventInput("update", {"state": "downloading"}, T0, 1),
        EventInput("update", {"state": "verifying"}, T0 + timedelta(seconds=1), 2),
        EventInput("canary_verdict", {"pass": True, "p95_ms": 31.5}, T0 + timedelta(seconds=2), 3),
    ]
    assert store.events.record_many(a, batch, T0 + timedelta(seconds=5)) == 3
    # re-sent after a lost acknowledgement, plus one new event and one without a sequence
    resend = [*batch[1:], EventInput("rollback", {"reason": "thermal"}, T0, 4), EventInput("boot", {}, T0)]
    assert store.events.record_many(a, resend, T0 + timedelta(seconds=9)) == 2
    assert store.events.record(b, "update", {"state": "staged"}, T0, T0, seq=1) is True
    assert store.events.record(b, "update", {"state": "staged"}, T0, T0, seq=1) is False

    events_a = store.events.query(device_id=a)
    assert [e.seq for e in events_a] == [1, 2, 3, 4, None]
    assert events_a[2].payload == {"pass": True, "p95_ms": 31.5}
    assert events_a[0].received_at == T0 + timedelta(seconds=5)
    assert [e.device_id for e in store.events.query(kind="update")] == [a, a, b]
    assert [e.seq for e in store.events.query(device_id=a, kind="update")] == [1, 2]
    first_page = store.events.query(limit=2)
    rest = store.events.query(after_id=first_page[-1].id)
    assert [e.id for e in first_page + rest] == [e.id for e in store.events.query()]
    # a device's newest events, oldest of them first; another device's never mixed in
    assert [e.seq for e in store.events.latest(a, limit=3)] == [3, 4, None]
    assert [e.seq for e in store.events.latest(a)] == [1, 2, 3, 4, None]
    assert [e.seq for e in store.events.latest(b, limit=1)] == [1]
    with pytest.raises(NotFound):
        store.events.record("dev_ghost", "update", {}, T0, T0)
    with pytest.raises(InvalidArgument, match="payload"):
        store.events.record(a, "update", ["x"], T0, T0)  # type: ignore[arg-type]
