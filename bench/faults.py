"""The whole fault-injection suite: every test marked `faults`, the slow rounds included
(kill -9 after each of several steps, a diverged run resumed twice, resume from a chosen step).

    .venv/bin/python bench/faults.py            # about 6.5 minutes on 2 cores
    .venv/bin/python bench/faults.py -x -k disk # pytest options pass through

It ends with a line per fault and one total: faults injected, runs recovered, checkpoints
poisoned, records lost or duplicated (a test that records any of the last three fails). The
default test run (CI, `pytest -n 2`) includes the same suite without the slow rounds and
prints the same summary. Exit code: pytest's (0 = every fault handled as documented in
docs/faults.md).
"""

import os
import sys

import pytest

if __name__ == "__main__":
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.exit(pytest.main(["-q", "-m", "faults", "--slow", "-p", "no:cacheprovider",
                        os.path.join(root, "tests"), *sys.argv[1:]]))
