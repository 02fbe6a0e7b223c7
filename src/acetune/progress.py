"""One progress-bar wrapper for every stage (tqdm: rate and ETA), drawn on stderr.

Silence it with `ACETUNE_NO_PROGRESS=1` (tests and CI logs set it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_disabled() -> bool:
    return os.environ.get("ACETUNE_NO_PROGRESS", "") not in ("", "0")


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it", **kw: Any):
    """A tqdm bar with rate and ETA; `disable` follows ACETUNE_NO_PROGRESS unless given."""
    kw.setdefault("disable", progress_disabled())
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, **kw)


def silence_library_bars() -> None:
    """With ACETUNE_NO_PROGRESS set, also silence the bars transformers/diffusers/datasets draw."""
    if not progress_disabled():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for module in ("transformers.utils.logging", "diffusers.utils.logging", "datasets.utils.logging"):
        try:
            __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
        except (ImportError, AttributeError):  # a library that is absent or too old to have the switch
            pass
