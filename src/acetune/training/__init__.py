"""Training machinery: loop, LoRA setup, data, optimizers, checkpoints, loggers, validation."""

import logging as _logging

# peft imports bitsandbytes when it is installed (`--optimizer adamw8bit`); its CPU build warns on import about
# an optional 4-bit kernel acetune never uses
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
