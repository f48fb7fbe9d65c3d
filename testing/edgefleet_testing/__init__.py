"""The testing distribution (``edgefleet-testing``), shared by the tests, the demo and the benchmarks: the model
generator (``modelgen``), bounded waiting (``waiting``), signed test bundles (``bundles``), the process
harness (``fleet``: a real controller and real edge-runtime processes; ``controller``: an in-process
controller on a real port), the fault-injecting TCP proxy (``faultproxy``) and throwaway PostgreSQL
(``postgres``). Shipped code never imports it (an import contract in ``make lint``).
"""
