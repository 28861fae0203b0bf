"""Aggregation test helpers: the independent bar computation lives in ``aggregation_reference``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
