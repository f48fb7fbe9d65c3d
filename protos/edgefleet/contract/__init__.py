"""The shared contract code: the rules every side applies the same way, importing no side.

- Bundles: the manifest (``bundle``), the directory layout (``bundle_layout``), its sections and declared
  policy (``bundle_sections``, ``bundle_policy``), their fields read and written (``bundle_fields``), files
  on disk (``bundle_files``), the build spec (``bundle_spec``), the publisher's text files (``user_files``),
  verification and archives (``bundle_archive``, ``bundle_upload``), signing (``signing``) and the golden
  set (``golden``).
- What a bundle computes: ``processing`` (pre-processing, decode, NMS). It needs OpenCV, installed by the
  ``processing`` extra; the controller never imports it and nothing else here does either.
- Config: manifests (``manifest``, ``manifest_schema``, ``manifest_yaml``), layering (``layering``),
  policy precedence (``precedence``), which keys change inference (``config_classes``).
- Rules shared by the pipeline and the device: precision (``precision``), latency budgets (``budget``),
  hardware classes (``hardware``), latency sketches (``sketch``).
- One of each: ``canonical`` JSON, ``digests``, ``durable`` writes; ``errors`` draws the error tree.
"""
