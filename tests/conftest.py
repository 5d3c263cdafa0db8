"""Makes the repository importable from every test (`configs`, `tests.train.train_helpers`)."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
