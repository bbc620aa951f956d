"""segsweep: Hydra-configured experiment suite for 2D medical image segmentation."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
