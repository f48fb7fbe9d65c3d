"""The controller store against a real SQLite file and a real PostgreSQL server (edgefleet_testing/postgres.py)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet_controller.store import UNSET, EventInput, Store, head_revision
from edgefleet_controller.store.errors import (
    Conflict,
    InvalidArgument,
    InvalidPageToken,
    InvalidToken,
    NotFound,
    StillReferenced,
    TokenExhausted,
    TokenExpired,
    TokenRejected,
    TokenRevoked,
)
from edgefleet_controller.store.records import ArtifactRef, ConfigDocInput, OperatorRole, TokenState
from edgefleet_controller.store.schema import metadata
from edgefleet_testing.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in a temp file, or a clean PostgreSQL database (a throwaway local server started once per
    session, or EDGEFLEET_TEST_PG_URL); the PostgreSQL variant skips, saying why, where neither exists."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def enroll(
    store: Store, site: str = "berlin", tags: dict[str, str] | None = None, name: str = "cam"
) -> tuple[str, str]:
    _, secret = store.enrollment_tokens.create(site, 3600, T0)
    device, credential = store.devices.enroll(secret, name, "x86-avx2", {"ram_mb": 4096}, tags or {}, T0)
    return device.id, credential


def publish(store: Store, name: str = "detector", version: str = "1.0.0", model: str = "m1") -> str:
    manifest = f'{{"name":"{name}","version":"{version}","model":"{model}"}}'.encode()
    record, _ = store.bundles.put(
        manifest,
        b"sig",
        name=name,
        version=version,
        key_id="pub-1",
        artifacts=[ArtifactRef("model", sha(model), 100), ArtifactRef("golden", sha("golden"), 7)],
        now=T0,
    )
    return record.digest


# ---- schema and lifecycle -----------------------------------------------------------------------------


def test_open_migrates_to_head_and_reopening_is_a_no_op(store_url: str) -> None:
    with Store.open(store_url) as first:
        assert first.db.schema_revision() == head_revision()
        tables = set(sa.inspect(first.db.engine).get_table_names())
    assert set(metadata.tables) | {"alembic_version"} <= tables
    with Store.open(store_url) as second:
        assert second.db.schema_revision() == head_revision()
        assert second.desired.change_counter() == 0


def test_migrations_create_exactly_the_declared_schema(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with Store.open_data_dir(tmp_path / "data") as store:
        assert (tmp_path / "data" / "controller.db").exists()
        with store.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_state_survives_close_and_reopen(store_url: str) -> None:
    with Store.open(store_url) as store:
        device_id, credential = enroll(store, tags={"line": "3"})
        digest = publish(store)
        store.desired.assign([device_id], bundle_digest=digest, reason="pin", now=T0)
        store.configs.apply([("fleet", "default", None, '{"a":1}', sha("a1"))], "ops", T0)
        _, op_secret = store.operator_tokens.create("alice", "operator", None, T0)
        store.events.record(device_id, "update", {"to": digest}, T0, T0, seq=1)
    with Store.open(store_url) as store:
        assert store.devices.authenticate(credential) == device_id
        assert store.devices.get(device_id).tags == {"line": "3"}
        assert store.desired.get(device_id).bundle_digest == digest
        assert store.bundles.get("detector@1.0.0").digest == digest
        assert [d.name for d in store.configs.current()] == ["default"]
        assert store.operator_tokens.authenticate(op_secret, T0).name == "alice"
        assert [e.payload for e in store.events.query(device_id=device_id)] == [{"to": digest}]
        assert store.desired.change_counter() == 1


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="aware UTC"):
        store.enrollment_tokens.create("berlin", 60, datetime(2025, 1, 1))


# ---- enrollment tokens --------------------------------------------------------------------------------


def test_enrollment_token_secret_format_and_only_its_hash_is_stored(store: Store) -> None:
    record, secret = store.enrollment_tokens.create("berlin", 600, T0, max_uses=3, created_by="alice")
    assert secret.startswith(f"eft_{record.id}.")
    assert record.expires_at == T0 + timedelta(seconds=600)
    assert (record.site, record.uses, record.max_uses, record.created_by) == ("berlin", 0, 3, "alice")
    with store.db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT secret_sha256 FROM enrollment_tokens")).scalar_one()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    consumed = store.enrollment_tokens.consume(secret, T0 + timedelta(seconds=1))
    assert consumed.uses == 1
    assert store.enrollment_tokens.all() == [consumed]
    assert store.enrollment_tokens.all(site="paris") == []


def test_expired_enrollment_token_says_when(store: Store) -> None:
    record, secret = store.enrollment_tokens.create("berlin", 60, T0)
    with pytest.raises(TokenExpired) as caught:
        store.enrollment_tokens.consume(secret, T0 + timedelta(seconds=60))
    assert caught.value.expired_at == record.expires_at
    assert record.expires_at.isoformat() in str(caught.value)
    assert record.state(T0 + timedelta(seconds=61)) is TokenState.EXPIRED


def test_revoked_enrollment_token_is_refused_and_revoke_is_idempotent(store: Store) -> None:
    record, secret = store.enrollment_tokens.create("berlin", 60, T0)
    revoked = store.enrollment_tokens.revoke(record.id, T0 + timedelta(seconds=5))
    again = store.enrollment_tokens.revoke(record.id, T0 + timedelta(seconds=9))
    assert revoked.revoked_at == again.revoked_at == T0 + timedelta(seconds=5)
    with pytest.raises(TokenRevoked, match="revoked at"):
        store.enrollment_tokens.consume(secret, T0 + timedelta(seconds=10))
    with pytest.raises(NotFound, match="enrollment token 'nope'"):
        store.enrollment_tokens.revoke("nope", T0)


def test_exhausted_enrollment_token_names_its_uses(store: Store) -> None:
    _, secret = store.enrollment_tokens.create("berlin", 60, T0, max_uses=2)
    store.enrollment_tokens.consume(secret, T0)
    store.enrollment_tokens.consume(secret, T0)
    with pytest.raises(TokenExhausted, match="used 2 of 2 times"):
        store.enrollment_tokens.consume(secret, T0)


@pytest.mark.parametrize("secret_kind", ["malformed", "unknown id", "wrong secret", "wrong prefix"])
def test_bad_enrollment_secrets_are_invalid(store: Store, secret_kind: str) -> None:
    record, secret = store.enrollment_tokens.create("berlin", 60, T0)
    bad = {
        "malformed": "hello",
        "unknown id": "eft_0000000000000000.abc",
        "wrong secret": f"eft_{record.id}.not-the-secret",
        "wrong prefix": secret.replace("eft_", "eot_"),
    }[secret_kind]
    with pytest.raises(InvalidToken):
        store.enrollment_tokens.consume(bad, T0)
    assert store.enrollment_tokens.get(record.id).uses == 0


@pytest.mark.parametrize(("ttl", "max_uses"), [(0, None), (-5, None), (60, 0)])
def test_enrollment_token_arguments_are_checked(store: Store, ttl: float, max_uses: int | None) -> None:
    with pytest.raises(InvalidArgument, match="must be"):
        store.enrollment_tokens.create("berlin", ttl, T0, max_uses=max_uses)


def test_concurrent_enrollments_never_exceed_max_uses(store: Store) -> None:
    _, secret = store.enrollment_tokens.create("berlin", 3600, T0, max_uses=5)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        try:
            store.devices.enroll(secret, f"cam-{i}", "x86-avx2", {}, {}, T0)
            result = "ok"
        except TokenExhausted:
            result = "exhausted"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["exhausted"] * 7 + ["ok"] * 5
    assert len(store.devices.page()[0]) == 5


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
    assert store.devices.authenticate(credential) == device_id
    assert store.devices.authenticate(credential + "x") is None
    assert store.devices.authenticate(credential.replace(device_id, other_id)) is None
    assert store.devices.authenticate("edc_dev_nobody.secret") is None
    assert store.devices.authenticate("garbage") is None
    assert store.devices.authenticate("") is None


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


# ---- operator tokens ----------------------------------------------------------------------------------


def test_operator_tokens_authenticate_expire_and_revoke(store: Store) -> None:
    record, secret = store.operator_tokens.create("alice", "operator", 3600, T0)
    assert secret.startswith(f"eot_{record.id}.")
    assert store.operator_tokens.authenticate(secret, T0 + timedelta(minutes=59)) == record
    with pytest.raises(TokenExpired) as expired:
        store.operator_tokens.authenticate(secret, T0 + timedelta(hours=1))
    assert expired.value.expired_at == T0 + timedelta(hours=1)

    forever, forever_secret = store.operator_tokens.create("bob", OperatorRole.VIEWER, None, T0)
    assert forever.expires_at is None
    assert store.operator_tokens.authenticate(forever_secret, T0 + timedelta(days=3650)).role is OperatorRole.VIEWER
    store.operator_tokens.revoke(forever.id, T0 + timedelta(days=1))
    with pytest.raises(TokenRevoked):
        store.operator_tokens.authenticate(forever_secret, T0 + timedelta(days=2))
    with pytest.raises(InvalidToken):
        store.operator_tokens.authenticate(secret[:-2], T0)
    with pytest.raises(InvalidToken):
        store.operator_tokens.authenticate("eft_abc.def", T0)
    assert sorted(r.name for r in store.operator_tokens.all()) == ["alice", "bob"]
    with pytest.raises(NotFound):
        store.operator_tokens.revoke("nope", T0)


def test_operator_role_is_checked_and_ordered(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="viewer, operator, admin, got 'root'"):
        store.operator_tokens.create("eve", "root", None, T0)
    assert OperatorRole.ADMIN.allows(OperatorRole.OPERATOR)
    assert OperatorRole.OPERATOR.allows(OperatorRole.OPERATOR)
    assert not OperatorRole.VIEWER.allows(OperatorRole.OPERATOR)


def test_bootstrap_admin_is_created_only_without_a_usable_admin(store: Store) -> None:
    store.operator_tokens.create("ops", "operator", None, T0)
    secret = store.operator_tokens.ensure_bootstrap_admin(T0)
    assert secret is not None
    admin = store.operator_tokens.authenticate(secret, T0)
    assert (admin.role, admin.name, admin.expires_at) == (OperatorRole.ADMIN, "bootstrap-admin", None)
    assert store.operator_tokens.ensure_bootstrap_admin(T0 + timedelta(days=1)) is None
    store.operator_tokens.revoke(admin.id, T0 + timedelta(days=2))
    again = store.operator_tokens.ensure_bootstrap_admin(T0 + timedelta(days=3))
    assert again is not None and again != secret


# ---- trusted keys -------------------------------------------------------------------------------------


def _public_pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_trusted_keys_add_list_revoke(store: Store) -> None:
    pem = _public_pem()
    added = store.trusted_keys.add("pub-1", pem, T0)
    assert store.trusted_keys.add("pub-1", pem, T0 + timedelta(days=1)) == added
    with pytest.raises(Conflict, match="different public key"):
        store.trusted_keys.add("pub-1", _public_pem(), T0)
    store.trusted_keys.add("pub-2", _public_pem(), T0)
    revoked = store.trusted_keys.revoke("pub-1", T0 + timedelta(days=2))
    assert revoked.revoked_at == T0 + timedelta(days=2)
    assert [k.key_id for k in store.trusted_keys.all()] == ["pub-1", "pub-2"]
    assert [k.key_id for k in store.trusted_keys.all(include_revoked=False)] == ["pub-2"]
    with pytest.raises(Conflict, match="revoked"):
        store.trusted_keys.add("pub-1", pem, T0 + timedelta(days=3))
    with pytest.raises(InvalidArgument, match="PEM"):
        store.trusted_keys.add("pub-3", "not a key", T0)
    with pytest.raises(NotFound):
        store.trusted_keys.get("pub-9")


# ---- bundles ------------------------------------------------------------------------------------------


def test_put_bundle_is_content_addressed_and_idempotent(store: Store) -> None:
    manifest = b'{"name":"detector","version":"1.0.0"}'
    refs = [ArtifactRef("model", sha("m"), 1000)]
    record, created = store.bundles.put(
        manifest, b"sig", name="detector", version="1.0.0", key_id="pub-1", artifacts=refs, now=T0
    )
    assert created
    assert record.digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert record.size == len(manifest) + 1000
    assert record.ref == "detector@1.0.0"
    again, created_again = store.bundles.put(
        manifest, b"sig", name="detector", version="1.0.0", key_id="pub-1", artifacts=refs, now=T0
    )
    assert (again, created_again) == (record, False)
    assert store.bundles.get(record.digest) == record
    assert store.bundles.get("detector@1.0.0") == record
    assert store.bundles.get_artifact(sha("m")).size == 1000


def test_same_name_and_version_with_other_bytes_conflicts(store: Store) -> None:
    digest = publish(store, version="1.0.0", model="m1")
    with pytest.raises(Conflict, match=f"detector@1.0.0 already exists as {digest}"):
        publish(store, version="1.0.0", model="m2")


def test_artifact_size_must_agree_across_bundles(store: Store) -> None:
    publish(store, version="1.0.0", model="m1")
    with pytest.raises(Conflict, match="stored with 100 bytes"):
        store.bundles.put(
            b"{}",
            b"sig",
            name="other",
            version="1",
            key_id="k",
            artifacts=[ArtifactRef("model", sha("m1"), 5)],
            now=T0,
        )


def test_get_and_list_bundles(store: Store) -> None:
    first = publish(store, "detector", "1.0.0", "m1")
    second = publish(store, "detector", "1.1.0", "m2")
    other = publish(store, "classifier", "0.1.0", "m3")
    assert [b.digest for b in store.bundles.all()] == [other, first, second]
    assert [b.digest for b in store.bundles.all(name="detector")] == [first, second]
    assert dict((r.role, r.digest) for r in store.bundles.get(second).artifacts) == {
        "golden": sha("golden"),
        "model": sha("m2"),
    }
    with pytest.raises(NotFound, match=r"detector@9\.9\.9"):
        store.bundles.get("detector@9.9.9")
    with pytest.raises(NotFound):
        store.bundles.get(sha("nothing"))
    with pytest.raises(InvalidArgument, match="name@version"):
        store.bundles.get("detector")
    with pytest.raises(InvalidArgument):
        store.bundles.get("sha256:XYZ")


def test_delete_bundle_refused_while_referenced_then_returns_orphans(store: Store) -> None:
    keep = publish(store, "detector", "1.0.0", "m1")
    doomed = publish(store, "detector", "2.0.0", "m2")
    device_a, _ = enroll(store)
    device_b, _ = enroll(store)
    store.desired.assign([device_a], bundle_digest=doomed, reason="rollout", now=T0)
    store.devices.record_report(device_b, {"slots": {"b": {"bundle": doomed}}}, T0)

    with pytest.raises(StillReferenced) as caught:
        store.bundles.delete(doomed)
    assert caught.value.referrers == (f"device {device_a} (desired)", f"device {device_b} (slot:b)")
    assert device_a in str(caught.value) and device_b in str(caught.value)

    store.desired.assign([device_a], bundle_digest=keep, reason="back", now=T0)
    store.devices.record_report(device_b, {"running_bundle": doomed}, T0)
    with pytest.raises(StillReferenced, match=f"device {device_b} \\(running\\)"):
        store.bundles.delete(doomed)

    store.devices.record_report(device_b, {"running_bundle": keep}, T0)
    # the golden artifact is shared with the kept bundle: only the model blob is orphaned
    assert store.bundles.delete(doomed) == [sha("m2")]
    assert [b.digest for b in store.bundles.all()] == [keep]
    with pytest.raises(NotFound):
        store.bundles.get_artifact(sha("m2"))
    assert store.bundles.get_artifact(sha("golden")).size == 7
    with pytest.raises(NotFound):
        store.bundles.delete(doomed)


# ---- configs ------------------------------------------------------------------------------------------


def test_config_documents_are_versioned_and_unchanged_docs_are_no_ops(store: Store) -> None:
    fleet = ConfigDocInput("fleet", "default", None, '{"sla_ms":50}', sha("fleet1"))
    site = ConfigDocInput("site", "berlin", "berlin", '{"sla_ms":40}', sha("site1"))
    assert store.configs.revision() == 0
    assert store.configs.apply([fleet, site], "alice", T0) == 1
    assert store.configs.apply([fleet, site], "alice", T0 + timedelta(minutes=1)) == 1

    changed = fleet._replace(doc_json='{"sla_ms":45}', content_digest=sha("fleet2"))
    assert store.configs.apply([changed, site], "bob", T0 + timedelta(minutes=2)) == 2
    current = {(d.kind, d.name): d for d in store.configs.current()}
    assert current["fleet", "default"].version == 2
    assert current["fleet", "default"].revision == 2
    assert current["fleet", "default"].applied_by == "bob"
    assert current["site", "berlin"].version == 1

    history = store.configs.history("fleet", "default")
    assert [(h.version, h.content_digest, h.revision) for h in history] == [
        (1, sha("fleet1"), 1),
        (2, sha("fleet2"), 2),
    ]

    assert store.configs.apply([], "carol", T0 + timedelta(minutes=3), removed=[("site", "berlin")]) == 3
    assert [(d.kind, d.name) for d in store.configs.current()] == [("fleet", "default")]
    tomb = store.configs.history("site", "berlin")[-1]
    assert (tomb.deleted, tomb.doc_json, tomb.version) == (True, None, 2)
    assert store.configs.apply([], "carol", T0, removed=[("site", "berlin")]) == 3
    assert store.configs.apply([site], "dave", T0 + timedelta(minutes=4)) == 4
    assert store.configs.history("site", "berlin")[-1].version == 3
    with pytest.raises(NotFound, match="fleet/other"):
        store.configs.history("fleet", "other")


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([("fleet", "a", None, "{not json", sha("x"))], "not valid JSON"),
        ([("fleet", "a", None, "{}", "md5:1")], "content_digest"),
        ([("fleet", "a", None, "{}", sha("x")), ("fleet", "a", None, "{}", sha("y"))], "appears twice"),
        ([("", "a", None, "{}", sha("x"))], "config kind"),
    ],
)
def test_config_apply_refuses_bad_documents_atomically(store: Store, docs: list[Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        store.configs.apply(docs, "alice", T0)
    assert store.configs.revision() == 0
    assert store.configs.current() == []


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
    with pytest.raises(NotFound):
        store.events.record("dev_ghost", "update", {}, T0, T0)
    with pytest.raises(InvalidArgument, match="payload"):
        store.events.record(a, "update", ["x"], T0, T0)  # type: ignore[arg-type]
