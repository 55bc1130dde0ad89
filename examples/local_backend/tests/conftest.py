"""Run from a checkout without installing: the package directory next to tests/ is importable."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("claude_net_local") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
