"""Capture files (the ``../shared/replay`` line format): serving them as venue endpoints and recording them. The
format itself (:mod:`pipeline.collectors.capture`) belongs to the collectors."""
