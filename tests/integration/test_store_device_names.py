"""Device names are unique per site (store transaction + migration 0007's unique index), on SQLite and
PostgreSQL: a refused enrollment changes nothing, a deleted device's name is free again, and an older database
holding duplicates migrates by renaming the later ones."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from edgefleet_controller.store import Store
from edgefleet_controller.store import schema as t
from edgefleet_controller.store.errors import Conflict, DeviceNameTaken
from tests.integration.store_cases import T0, upgrade_to

pytestmark = pytest.mark.integration


def test_a_second_device_of_a_name_in_one_site_is_refused_and_the_token_use_kept(store: Store) -> None:
    token, secret = store.enrollment_tokens.create("site-a", 3600, T0, max_uses=3)
    first, _ = store.devices.enroll(secret, "lab-1", "x86-avx2", {}, {}, T0)
    with pytest.raises(DeviceNameTaken) as refused:
        store.devices.enroll(secret, "lab-1", "rpi5", {"ram_mb": 8}, {"zone": "z"}, T0 + timedelta(seconds=1))
    assert isinstance(refused.value, Conflict)
    assert str(refused.value) == (
        f"device name 'lab-1' is already enrolled in site 'site-a' (device id {first.id}); "
        f"delete it with `fleetctl device delete {first.id}` or choose another name"
    )
    # a rejected request changes nothing: the token use is not consumed, no device or tag row was written
    assert store.enrollment_tokens.get(token.id).uses == 1
    assert [d.id for d in store.devices.page()[0]] == [first.id]
    assert store.devices.get(first.id).hardware_class == "x86-avx2"
    # the same name in another site is another device; another name in the same site is fine
    _, other_secret = store.enrollment_tokens.create("site-b", 3600, T0)
    in_b, _ = store.devices.enroll(other_secret, "lab-1", "x86-avx2", {}, {}, T0)
    lab_2, _ = store.devices.enroll(secret, "lab-2", "x86-avx2", {}, {}, T0)
    assert (in_b.site, lab_2.site) == ("site-b", "site-a")
    assert store.enrollment_tokens.get(token.id).uses == 2


def test_a_deleted_devices_name_is_free_again(store: Store) -> None:
    _, secret = store.enrollment_tokens.create("site-a", 3600, T0)
    gone, _ = store.devices.enroll(secret, "lab-1", "x86-avx2", {}, {"zone": "z"}, T0)
    with store.db.transaction() as conn:  # what deleting a device does to its row (cascading to its children)
        conn.execute(t.devices.delete().where(t.devices.c.id == gone.id))
    again, _ = store.devices.enroll(secret, "lab-1", "x86-avx2", {}, {}, T0)
    assert again.id != gone.id and again.name == "lab-1"


def test_the_unique_index_refuses_a_duplicate_written_past_the_store(store: Store) -> None:
    _, secret = store.enrollment_tokens.create("site-a", 3600, T0)
    device, _ = store.devices.enroll(secret, "lab-1", "x86-avx2", {}, {}, T0)
    with store.db.read() as conn:
        row = dict(conn.execute(sa.select(t.devices)).one()._mapping)
    with pytest.raises(sa.exc.IntegrityError), store.db.transaction() as conn:
        conn.execute(t.devices.insert().values({**row, "id": "dev_copy", "credential_sha256": "00"}))
    assert [d.id for d in store.devices.page()[0]] == [device.id]


def _insert_device(conn: sa.Connection, device_id: str, site: str, name: str, enrolled_at: datetime) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO devices (id, name, site, tags_json, hardware_class, facts_json, credential_sha256, "
            "enrolled_at, reported_json, health) VALUES (:id, :name, :site, '{}', 'x86', '{}', '00', :t, '{}', "
            "'unknown')"
        ),
        {"id": device_id, "name": name, "site": site, "t": enrolled_at},
    )


def test_0007_migrates_a_database_holding_duplicate_names_by_renaming_the_later_ones(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0006")
        with engine.begin() as conn:
            _insert_device(conn, "dev_00000000000000a2", "berlin", "cam", datetime(2025, 1, 2))
            _insert_device(conn, "dev_00000000000000a1", "berlin", "cam", datetime(2025, 1, 1))
            _insert_device(conn, "dev_00000000000000a3", "berlin", "cam", datetime(2025, 1, 3))
            _insert_device(conn, "dev_00000000000000b1", "paris", "cam", datetime(2025, 1, 4))
            # the rename target of a2 is taken already: a2 gets the whole id instead
            _insert_device(conn, "dev_00000000000000c1", "berlin", "cam-00000000", datetime(2025, 1, 5))
    finally:
        engine.dispose()
    with capture_logs() as logs, Store.open(store_url) as migrated:
        names = {d.id: (d.site, d.name) for d in migrated.devices.page()[0]}
        _, secret = migrated.enrollment_tokens.create("berlin", 3600, T0)
        with pytest.raises(DeviceNameTaken, match="dev_00000000000000a1"):
            migrated.devices.enroll(secret, "cam", "x86", {}, {}, T0)
    assert names == {
        "dev_00000000000000a1": ("berlin", "cam"),  # the first enrolled keeps its name
        "dev_00000000000000a2": ("berlin", "cam-00000000000000a2"),
        "dev_00000000000000a3": ("berlin", "cam-00000000000000a3"),
        "dev_00000000000000b1": ("paris", "cam"),
        "dev_00000000000000c1": ("berlin", "cam-00000000"),
    }
    renamed = [e for e in logs if e["event"] == "store.migration_device_renamed"]
    assert [(e["device_id"], e["old_name"], e["new_name"]) for e in renamed] == [
        ("dev_00000000000000a2", "cam", "cam-00000000000000a2"),
        ("dev_00000000000000a3", "cam", "cam-00000000000000a3"),
    ]
