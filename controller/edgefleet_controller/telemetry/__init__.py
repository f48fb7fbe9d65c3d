"""Telemetry on the controller: ingest of device batches, queries, drift, thermals and the review queue.

Each submodule owns one concern: ``ingest`` (batch validation and the contiguous mark, pure), ``drift``
(PSI and the baseline rule, pure), ``thermal`` (throttling, pure), ``ingest_plan`` (what a batch changes:
fresh records, mark, throttling and baseline, decided before the store writes it; pure), ``query``
(QueryTelemetry over stored windows), ``review`` (the review queue), ``service`` (``TelemetryService``,
the shell the servicers call). Import from the submodules; this package imports nothing.
"""
