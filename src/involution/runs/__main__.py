"""``python -m involution.runs summarize [DIR] [--finished]`` (the sweep's table, see
involution.runs.summary) and ``python -m involution.runs dashboard [DIR] [--entity ...]`` (its
W&B workspace, see involution.runs.dashboard)."""

import sys

from involution.runs import dashboard, summary

COMMANDS = {"summarize": summary.main, "dashboard": dashboard.main}

if __name__ == "__main__":
    command, *rest = sys.argv[1:] or [""]
    if command not in COMMANDS:
        print(f"usage: python -m involution.runs {{{','.join(COMMANDS)}}} [DIR] [options]",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    sys.exit(COMMANDS[command](rest))
