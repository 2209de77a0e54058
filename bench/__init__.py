"""Benchmarks: scripts that print figures and ratios against a baseline measured in the same
run. ``python -m bench`` runs them all; ``python -m bench ingest`` runs one."""

import sys
from pathlib import Path

# the servers and tiny models the gateway benchmark starts are the tests' own harness
_SUPPORT = str(Path(__file__).resolve().parents[1] / "tests" / "support")
if _SUPPORT not in sys.path:
    sys.path.append(_SUPPORT)
