"""The runtime's composition root: ``build_agent`` builds every part once and wires them to each other and to
the agent (the parts that call back into the agent reach the agent it returns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.agent.agent import AgentSettings
from edge_runtime.bootstrap import build_agent
from edge_runtime.update.events import DesiredBundleChanged
from edgefleet.v1 import common_pb2

pytestmark = pytest.mark.integration


async def test_build_agent_wires_the_parts(tmp_path: Path) -> None:
    settings = AgentSettings(controller="127.0.0.1:1", data_dir=tmp_path / "device", source="synthetic:0")
    agent = build_agent(settings)
    try:
        # One telemetry pipeline hears frames and update events.
        assert agent.runner.observer == agent.telemetry.observe
        assert agent.reporter.on_event == agent.telemetry.record_event
        # The sync loop reports the agent's state; the evaluator posts into the agent's update queue.
        assert agent.sync.link is agent.link and agent.sender.link is agent.link
        agent.driver.load()  # what run() does first: the journal, before anything reports
        reported = agent.sync.reported()
        assert reported.health == common_pb2.HEALTH_STARTING and reported.update_state
        with pytest.raises(RuntimeError, match="post before run"):
            agent.evaluator.post(DesiredBundleChanged("", (), "", None, None))
        # The switcher loads into the slot the frame loop serves from.
        assert agent.switcher.slot is agent.slot
        assert (tmp_path / "device").is_dir()
    finally:
        agent.fetcher.close()
        agent.telemetry.close()
        await agent.link.close()
