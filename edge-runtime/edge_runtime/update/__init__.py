"""The device's bundle update: pure state machine (``state``), durable journal, bundle slots, driver.

``state`` decides, ``journal`` remembers, ``slots`` owns the bundle directories on disk, ``driver`` journals
each decision and then executes its effects through the ports it is given; ``testing`` holds public fakes of
those ports; ``crashdrill`` is the subprocess entry point the crash-recovery test kills at every boundary.
"""
