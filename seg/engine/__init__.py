"""The training engine: fit (loop.py), one inference path (inference.py), one checkpoint schema
(checkpoint.py). See docs/design.md."""
