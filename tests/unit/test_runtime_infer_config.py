"""``edge-runtime infer``'s operator config: the flags become ``inference.*`` keys over a config file's values,
each refused with the flag's name when the manifest schema would refuse it; the file's other keys stay."""

from __future__ import annotations

import pytest

from edge_runtime.bundle_open import BundleInputError
from edge_runtime.infer_cli import operator_config


def test_flags_win_over_the_file_and_leave_its_other_keys() -> None:
    base = {"inference": {"conf_threshold": 0.9, "fp16": True}, "sla": {"latency_ms": 40}}
    config = operator_config(base, providers=["cuda", "cpu"], precision="int8-u8s8", conf_threshold=0.3)
    assert config == {
        "inference": {"conf_threshold": 0.3, "fp16": True, "providers": ["cuda", "cpu"], "precision": "int8-u8s8"},
        "sla": {"latency_ms": 40},
    }
    assert base == {"inference": {"conf_threshold": 0.9, "fp16": True}, "sla": {"latency_ms": 40}}
    assert operator_config(base, providers=None, precision=None, conf_threshold=None)["inference"] == base["inference"]
    assert operator_config({}, providers=None, precision=None, conf_threshold=0.0) == {
        "inference": {"conf_threshold": 0.0}
    }


@pytest.mark.parametrize(
    ("providers", "threshold", "message"),
    [
        (["cpu", "gpu"], None, "--providers ['cpu', 'gpu']: inference.providers[1]: must be one of"),
        (["cpu", "cpu"], None, "--providers ['cpu', 'cpu']: inference.providers"),
        (None, -0.1, "--conf-threshold -0.1: inference.conf_threshold: must be >= 0"),
    ],
)
def test_values_the_schema_refuses_name_the_flag(
    providers: list[str] | None, threshold: float | None, message: str
) -> None:
    with pytest.raises(BundleInputError) as caught:
        operator_config({}, providers=providers, precision=None, conf_threshold=threshold)
    assert str(caught.value).startswith(message), str(caught.value)
