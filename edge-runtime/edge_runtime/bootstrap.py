"""The runtime's composition root: the only place that builds the agent's parts and wires them together.

``build_agent(settings)`` opens the data directory's stores (bundle slots, update journal, configs), the
controller link, the engine slot and frame loop, the download, verification and switch ports the update
driver drives, the canary evaluator, the sync loop, the event sender and the telemetry pipeline, and hands
them to ``EdgeAgent``, which only runs them. Parts that call back into the agent (the evaluator posting update
events, the driver's crash-drill hook, the sync loop's report and response) get late-bound closures: the
agent exists by the time any of them runs. Call it inside the running event loop (grpc.aio objects bind to it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_runtime.agent.agent import AgentParts, AgentSettings, EdgeAgent
from edge_runtime.agent.canary.evaluator import CanaryEvaluator
from edge_runtime.agent.canary.shadow import ThermalProbe
from edge_runtime.agent.client import ControllerLink
from edge_runtime.agent.download.fetcher import BlobFetcher
from edge_runtime.agent.hardware import read_host_facts
from edge_runtime.agent.health.endpoint import HealthEndpoint
from edge_runtime.agent.retry import Sleep
from edge_runtime.agent.runner import FrameRunner
from edge_runtime.agent.sync.loop import SyncLoop
from edge_runtime.agent.telemetry.pipeline import BufferedReporter, TelemetryPipeline
from edge_runtime.agent.telemetry.reporter import EventSender
from edge_runtime.agent.update.config_keeper import ConfigKeeper
from edge_runtime.agent.update.switcher import SlotSwitcher
from edge_runtime.agent.update.verifier import SignatureVerifier
from edge_runtime.inference import EngineSlot
from edge_runtime.sources import open_source
from edge_runtime.telemetry.sensors import SensorReader
from edge_runtime.update.driver import Phase, UpdateDriver
from edge_runtime.update.events import UpdateEvent
from edge_runtime.update.journal import Journal
from edge_runtime.update.record import UpdateState
from edge_runtime.update.slots import BundleSlots
from edgefleet.v1 import device_pb2

__all__ = ["build_agent"]


def build_agent(
    settings: AgentSettings,
    *,
    announce: Callable[[str], None] = lambda _: None,
    retry_sleep: Sleep | None = None,
) -> EdgeAgent:
    """Build one device's agent from its settings; ``retry_sleep`` replaces tenacity's sleep (tests)."""
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    agent: EdgeAgent

    def post(event: UpdateEvent) -> None:
        agent.post(event)

    def judging_config() -> Mapping[str, Any]:
        return agent.judging_config()

    def crash_drill(before: UpdateState, after: UpdateState, phase: Phase) -> None:
        agent.crash_drill(before, after, phase)

    async def on_sync(response: device_pb2.SyncResponse) -> None:
        await agent.on_sync(response)

    slots = BundleSlots(data)
    slot = EngineSlot()
    sensors = SensorReader(data_dir=data)
    configs = ConfigKeeper(data, on_change=lambda _values: agent.use_source())
    link = ControllerLink(settings.controller)
    reporter = BufferedReporter()
    verifier = SignatureVerifier(key_dir=settings.trusted_keys_dir)
    fetcher = BlobFetcher(settings.controller, lambda: link.metadata, chunk_bytes=settings.chunk_bytes)
    switcher = SlotSwitcher(
        slot, cache_root=data / "cache", configs=configs.values, intra_op_threads=settings.intra_op_threads
    )
    runner = FrameRunner(slot, open_source(settings.source), frame_log=settings.frame_log)
    evaluator = CanaryEvaluator(
        switcher,
        runner,
        post,
        config=judging_config,
        report_verdict=reporter.report_verdict,
        thermal=ThermalProbe(sensors).read,
        alert=reporter.report_alert,
    )
    driver = UpdateDriver(
        journal=Journal(data / "update", slots=slots),
        slots=slots,
        fetcher=fetcher,
        verifier=verifier,
        switcher=switcher,
        evaluator=evaluator,
        reporter=reporter,
        configs=configs,
        disk_margin_bytes=settings.disk_margin_bytes,
        boundary_hook=crash_drill if settings.crash_at else None,
    )
    sync = SyncLoop(
        link=link,
        reported=lambda: agent.reported_state(),
        on_response=on_sync,
        wait_s=settings.sync_wait_s,
        retry_sleep=retry_sleep,
    )
    telemetry = TelemetryPipeline(
        data,
        stub=lambda: link.device,
        metadata=lambda: link.metadata,
        config=lambda: configs.in_force,
        sensors=sensors,
    )
    reporter.on_event = telemetry.record_event
    telemetry.precision_of = switcher.serving_precision
    switcher.listen(lambda digest, choice: reporter.report_precision(digest, choice.summary(), choice.numbers()))
    runner.observer = telemetry.observe
    parts = AgentParts(
        slots=slots,
        slot=slot,
        configs=configs,
        link=link,
        reporter=reporter,
        verifier=verifier,
        fetcher=fetcher,
        switcher=switcher,
        runner=runner,
        evaluator=evaluator,
        driver=driver,
        health_endpoint=HealthEndpoint(settings.health_listen),
        sync=sync,
        sender=EventSender(link=link, reporter=reporter, retry_sleep=retry_sleep),
        telemetry=telemetry,
        host=read_host_facts(),
        open_frames=open_source,
    )
    agent = EdgeAgent(settings, parts, announce=announce, retry_sleep=retry_sleep)
    return agent
