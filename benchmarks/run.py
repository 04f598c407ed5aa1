"""Run the popsdask performance benchmarks (same as ``popsdask bench``).

    python benchmarks/run.py --repeats 3 --ooc-rows 20000000

Results go to ``benchmarks/results/`` (results.json, results.md); see ``benchmarks/bench.py``.
"""

from __future__ import annotations

import sys

from bench import main  # benchmarks/bench.py: this script's directory is on sys.path

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
