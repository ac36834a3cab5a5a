"""Progress bars for the long waits (tokenising, retrain steps, probe embedding), quiet where nobody watches."""

import os

from tqdm import tqdm


def progress_bar(total: int, description: str, unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar on stderr, cleared when done; off when stderr is not a terminal (tqdm's disable=None: logs
    and pipes stay clean) and under CI (the CI environment variable set)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        disable=True if os.environ.get("CI") else None,
        leave=False,
        dynamic_ncols=True,
    )
