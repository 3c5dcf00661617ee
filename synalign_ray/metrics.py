"""Metrics the project reports: coverage of the real data by selected demonstrations, and distances between
real and synthetic embedding distributions (MMD², Wasserstein-1, sliced Wasserstein), vocabulary, duplicates.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------- coverage (selection)

# ------------------------------------------------------------------------- distribution distances (alignment)
