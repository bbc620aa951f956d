"""`python -m seg.predict ...` (see seg.predict)."""
import sys

from seg.predict.cli import main

sys.exit(main())
