"""Human-readable lines on standard error, the channel of progress, statistics, notes and errors
(standard output carries only data)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def say(line: str) -> None:
    """Print ``line`` on standard error without breaking a progress bar that is showing there."""
    tqdm.write(line, file=sys.stderr)
