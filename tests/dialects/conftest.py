"""The dialect tests reuse the fault tests' fixtures (the fake llama-server, site helpers) from ``tests/``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
