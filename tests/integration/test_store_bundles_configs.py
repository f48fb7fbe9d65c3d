"""The controller store's bundles and config documents: content addressing, references, versions."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest

from edgefleet_controller.store import Store
from edgefleet_controller.store.errors import Conflict, InvalidArgument, NotFound, StillReferenced
from edgefleet_controller.store.records import ArtifactRef, ConfigDocInput
from tests.integration.store_cases import T0, enroll, publish, sha

pytestmark = pytest.mark.integration


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
