"""Published JSON Schemas of the contract, loaded at run time with ``importlib.resources``.

``manifest-v1.schema.json`` is byte-identical to ``manifests/schema/manifest-v1.schema.json`` (a test
checks it); edit both together.
"""
