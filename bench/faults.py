"""The whole fault-injection suite: every test marked `faults`, the slow rounds included
(kill -9 after each of several steps, a diverged run resumed twice, resume from a chosen step).

    .venv/bin/python bench/faults.py            # about 3.5 minutes on 2 cores
    .venv/bin/python bench/faults.py -x -k disk # pytest options pass through

It ends with one line: faults injected, runs recovered, checkpoints poisoned (must be 0),
records lost or duplicated (must be 0). The default test run (CI) includes the same suite
without the slow rounds. Exit code: pytest's (0 = every fault handled as documented in
docs/faults.md).
"""

import os
import sys

import pytest

if __name__ == "__main__":
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.exit(pytest.main(["-q", "-m", "faults", "--slow", "-p", "no:cacheprovider",
                        os.path.join(root, "tests"), *sys.argv[1:]]))
