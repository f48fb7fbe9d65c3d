"""The edge runtime's agent: the shell that wires enrollment, sync, downloads, the update driver, the frame
loop, local health and state reporting into one asyncio process (``edge-runtime run``).

Import ``EdgeAgent`` and ``AgentSettings`` from ``edge_runtime.agent.agent``; each submodule owns one port or
loop (see their docstrings).
"""
