"""Benchmarks: scripts that print figures and ratios against a baseline measured in the same
run. ``python -m bench`` runs them all; ``python -m bench ingest`` runs one."""
