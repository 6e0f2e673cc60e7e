"""`python -m slam.cli ...` (what torchrun and the demo's side-by-side runs start)."""

import sys

from slam.cli import main

sys.exit(main())
