"""acetune: teach ACE-Step music models your own style with a LoRA."""

__version__ = "0.1.0"

import logging as _logging

# diffusers/peft import bitsandbytes when it is installed (`train --optimizer adamw8bit`); its CPU build
# warns on import about an optional 4-bit kernel acetune never uses
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
