"""Progress bars for loops that take more than a few seconds (tqdm, on stderr).

One wrapper so that every long loop of the library and the CLI looks the same, and so that
``FAIRREF_PROGRESS=0`` silences all of them (tests, logs). By default a bar is shown only
when stderr is a terminal.
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(it: Iterable[T], desc: str = "", **kw) -> Iterable[T]:
    """``it`` wrapped in a tqdm bar labelled ``desc`` (hidden when disabled, see above)."""
    env = os.environ.get("FAIRREF_PROGRESS")
    disable = None if env is None else env.strip() in ("0", "false", "no", "")
    return tqdm(it, desc=desc, disable=disable, leave=False, dynamic_ncols=True, **kw)
