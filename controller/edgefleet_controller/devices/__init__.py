"""Devices: enrollment, the Sync long-poll and reported state (``service``), desired state as this controller
last knew it (``desired``), what a device is sent for it (``delivery``), and device look-ups (``directory``)."""
