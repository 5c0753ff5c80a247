"""Deprecated: the published-model tables moved to :mod:`assigndet.presets` (one ``PRESETS`` table).

``assigndet.zoo`` re-exports them for one release and will then be removed.
"""
from __future__ import annotations

import warnings

from .presets import (ATSS_ROWS, BACKBONES, DYNAMIC_ATSS_ROWS, PAA_ROWS, PUBLISHED_NOTES, ROWS, SCHEDULES, Row,
                      build_row, mmdet, paa_minimal, zoo_names)

warnings.warn("assigndet.zoo is deprecated: use assigndet.presets", DeprecationWarning, stacklevel=2)

__all__ = ["ROWS", "ATSS_ROWS", "PAA_ROWS", "DYNAMIC_ATSS_ROWS", "PUBLISHED_NOTES", "BACKBONES", "SCHEDULES", "Row",
           "build_row", "paa_minimal", "mmdet", "zoo_names"]
