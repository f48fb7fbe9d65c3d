"""The device's canary verdict: shadow-run samples in, pass / fail / inconclusive with numbers out.

Pure core only (``verdict`` the rules, ``policy`` their thresholds, ``report`` the verdict they build,
``samples``, ``agreement``, ``stats``); the shell that records frames, runs
the shadow session and reports verdicts lives elsewhere.
"""
