"""The device's bundle update: a pure state machine, a durable journal, bundle slots and the driver.

The pure machine: ``state`` holds the one ``TRANSITIONS`` table and ``decide``; ``record`` the persisted
``UpdateRecord`` and ``UpdateState``; ``events`` and ``effects`` what goes in and comes out; ``decision``
the pieces its handlers (``desired``, ``progress``, ``recovery``) build a ``Decision`` from. Around it,
``journal`` remembers, ``slots`` owns the bundle directories on disk, ``driver`` journals each decision and
then executes its effects through the ports it is given; ``testing`` holds public fakes of those ports;
``crashdrill`` is the subprocess entry point the crash-recovery test kills at every boundary.
"""
