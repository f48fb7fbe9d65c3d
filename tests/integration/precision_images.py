"""Moved to ``edgefleet_testing.calibration_images``; this name stays until every test imports it from there."""

from edgefleet_testing.calibration_images import face_image, text_line, write_faces, write_text_lines

__all__ = ["face_image", "text_line", "write_faces", "write_text_lines"]
