"""``python -m involution.runs summarize [DIR] [--finished]`` (see involution.runs.summary.main)."""

import sys

from involution.runs.summary import main

sys.exit(main())
