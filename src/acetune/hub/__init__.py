"""Model folders and song datasets from the Hugging Face Hub (`acetune.hub.resolve` holds the logic).

Every flag that takes a model folder also takes a Hub repo id (`ACE-Step/ACE-Step-v1-3.5B`), a short
name from `MODELS` (`v1`, `acestep15-turbo`, `mert`, ...) or either with `@revision`. See docs/hub.md.
"""

from acetune.hub.resolve import (
    MODELS,
    HubModel,
    Source,
    fetch,
    hub_cache_dir,
    is_hub_ref,
    parse_ref,
    resolve_args,
    resolve_model,
    stage_components,
)

__all__ = ["MODELS", "HubModel", "Source", "fetch", "hub_cache_dir", "is_hub_ref", "parse_ref", "resolve_args", "resolve_model", "stage_components"]
