"""The controller store's credentials: enrollment tokens, operator tokens and trusted signing keys."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import (
    Conflict,
    InvalidArgument,
    InvalidToken,
    LastAdminToken,
    NotFound,
    TokenExhausted,
    TokenExpired,
    TokenRevoked,
)
from edgefleet_controller.store.records import OperatorRole, TokenState
from tests.integration.store_cases import T0

pytestmark = pytest.mark.integration


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
    with pytest.raises(LastAdminToken):  # the last usable admin token: refused unless asked for explicitly
        store.operator_tokens.revoke(admin.id, T0 + timedelta(days=2))
    assert store.operator_tokens.authenticate(secret, T0 + timedelta(days=2)).id == admin.id  # nothing changed
    other, _ = store.operator_tokens.create("temp-admin", OperatorRole.ADMIN, 3600, T0)
    with pytest.raises(LastAdminToken):  # the other admin token expired an hour after T0: it does not count
        store.operator_tokens.revoke(admin.id, T0 + timedelta(days=2))
    assert store.operator_tokens.revoke(admin.id, T0 + timedelta(minutes=1)).revoked_at  # while the other lived
    with pytest.raises(LastAdminToken):
        store.operator_tokens.revoke(other.id, T0 + timedelta(minutes=2))
    store.operator_tokens.revoke(other.id, T0 + timedelta(minutes=2), allow_last_admin=True)
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
