"""Canary, the agent's side: running a candidate beside the serving engine (``shadow``) and judging it
(``evaluator.CanaryEvaluator``, over the pure verdict in ``edge_runtime.canary``)."""
