"""Telemetry, the agent's side: what the device reports. ``pipeline`` turns frames, events and sensors into
buffered records; ``uploader`` ships the buffer to the controller; ``reporter`` queues and sends update
events, verdicts and alerts."""
