"""acetune: teach ACE-Step music models your own style with a LoRA."""

__version__ = "0.1.0"
