"""`python -m seg.report`: see seg.report.cli."""
import sys

from seg.report.cli import main

sys.exit(main())
