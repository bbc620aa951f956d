"""Shared test helpers: the one Hydra compose helper (compose.py)."""
