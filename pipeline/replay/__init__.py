"""Capture files (the ``../shared/replay`` line format): reading, serving them as venue endpoints, recording."""
