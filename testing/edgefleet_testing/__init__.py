"""The testing distribution (``edgefleet-testing``), shared by the tests, the demo and the benchmarks: the model
generator (``modelgen``), the real trained model and its bundle spec (``orientation``), bounded waiting
(``waiting``), signed test bundles and their upload stream (``bundles``), public fakes for our own ports
(``fakes``), the process harness (``fleet``: a real controller and real edge-runtime processes, on which the demo
runs too; ``controller``: an in-process controller on a real port), the fault-injecting TCP proxy
(``faultproxy``) and throwaway PostgreSQL (``postgres``). Shipped code never imports it (an import contract in
``make lint``).
"""
