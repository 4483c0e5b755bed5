"""How the model reads a text by default: window shape and scoring budget.

Constants only, so the command line can show them without importing numpy or torch;
`model.windows` (which uses them) explains each.
"""

from __future__ import annotations

DEFAULT_WINDOW_TOKENS = 128  # tokens per window
DEFAULT_STRIDE = 64  # tokens between window starts
DEFAULT_MAX_CHARS = 10_000  # characters read per text (`MODSTREAM_MAX_TEXT_CHARS`)
DEFAULT_MAX_WINDOWS = 32  # windows scored per text (`MODSTREAM_MAX_WINDOWS`)
