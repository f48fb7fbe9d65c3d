"""The store side of revocation, on SQLite and PostgreSQL: operator tokens record their last use at most once a
minute; a device's access can be disabled (state kept), re-enabled, rotated and deleted (rows cascade away,
the name is free again)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import NotFound
from edgefleet_controller.store.records import OperatorRole
from tests.integration.store_cases import T0, enroll

pytestmark = pytest.mark.integration


def test_operator_token_last_use_is_written_at_most_once_a_minute(store: Store) -> None:
    record, secret = store.operator_tokens.create("ci", OperatorRole.VIEWER, 3600, T0)
    assert store.operator_tokens.all()[0].last_used_at is None
    for seconds, expected in ((0, 0), (30, 0), (59, 0), (60, 60), (61, 60), (200, 200)):
        store.operator_tokens.authenticate(secret, T0 + timedelta(seconds=seconds))
        (listed,) = store.operator_tokens.all()
        assert listed.last_used_at == T0 + timedelta(seconds=expected), seconds
    generation = store.credential_generation.read()
    store.operator_tokens.revoke(record.id, T0 + timedelta(seconds=300))
    store.operator_tokens.revoke(record.id, T0 + timedelta(seconds=400))  # idempotent: moves it once
    assert store.credential_generation.read() == generation + 1
    with pytest.raises(NotFound):
        store.operator_tokens.revoke("0123456789abcdef", T0)
    (after,) = store.operator_tokens.all()
    assert after.revoked_at == T0 + timedelta(seconds=300)


def test_device_access_disable_enable_rotate_delete(store: Store) -> None:
    device_id, credential = enroll(store, name="cam-1", tags={"zone": "n"})
    store.devices.record_report(device_id, {"health": "serving"}, T0)
    access = store.device_access.check(credential)
    assert access is not None and (access.device_id, access.name, access.disabled_at) == (device_id, "cam-1", None)

    at = T0 + timedelta(minutes=5)
    before = store.credential_generation.read()
    assert store.device_access.set_disabled(device_id, at) == at
    assert store.credential_generation.read() == before + 1  # every replica's cache is told
    assert store.device_access.set_disabled(device_id, at + timedelta(minutes=1)) == at  # first time kept
    assert store.credential_generation.read() == before + 1  # a no-op moves nothing
    disabled = store.device_access.check(credential)
    assert disabled is not None and disabled.disabled_at == at
    kept = store.devices.get(device_id)
    assert kept.disabled_at == at and kept.health == "serving" and dict(kept.tags) == {"zone": "n"}
    assert store.device_access.set_disabled(device_id, None) is None
    assert store.devices.get(device_id).disabled_at is None
    enabled = store.credential_generation.read()
    assert store.device_access.set_disabled(device_id, None) is None  # enabling an enabled device: a no-op
    assert store.credential_generation.read() == enabled

    new = store.device_access.rotate(device_id)
    assert store.device_access.check(credential) is None
    assert store.device_access.check(new) is not None

    store.device_access.delete(device_id)
    assert store.device_access.check(new) is None
    with pytest.raises(NotFound):
        store.devices.get(device_id)
    assert store.desired.get_many([device_id]) == {}  # its desired state went with it
    generation = store.credential_generation.read()
    for action in (
        lambda: store.device_access.delete(device_id),
        lambda: store.device_access.rotate(device_id),
        lambda: store.device_access.set_disabled(device_id, T0),
    ):
        with pytest.raises(NotFound):
            action()
    assert store.credential_generation.read() == generation  # a refused switch moves nothing
    again, _ = enroll(store, name="cam-1")  # the name is free again
    assert again != device_id
