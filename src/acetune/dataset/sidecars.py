"""Sidecar text files next to each song, per convention (one table, used by caption and build-dataset).

`{stem}` is the audio file name without its extension. Reading/merging rules live with the
build-dataset stage; caption writes files with these names.
"""

from __future__ import annotations

# convention -> role -> file-name pattern
SIDECAR_NAMES: dict[str, dict[str, str]] = {
    "fork": {"prompt": "{stem}_prompt.txt", "lyrics": "{stem}_lyrics.txt"},  # woct0rdho/ACE-Step
    "simpletuner": {"prompt": "{stem}.txt", "lyrics": "{stem}.lyrics"},
    "acestep15": {"prompt": "{stem}.caption.txt", "lyrics": "{stem}.lyrics.txt", "meta": "{stem}.json"},
}

INSTRUMENTAL = "[instrumental]"  # what missing lyrics become


def sidecar_name(convention: str, role: str, stem: str) -> str:
    return SIDECAR_NAMES[convention][role].format(stem=stem)
