"""Wire formats shared with outside clients (pydantic v2 models)."""

from schemas.dead_letter import DeadLetter, ErrorKind, decode_bytes, encode_bytes
from schemas.feedback import ModeratorFeedback
from schemas.request import DEFAULT_MAX_TEXT_CHARS, MAX_TEXT_CHARS, ModerationRequest
from schemas.result import Coverage, ModerationResult, Span, Timings

__all__ = [
    "DEFAULT_MAX_TEXT_CHARS",
    "MAX_TEXT_CHARS",
    "Coverage",
    "DeadLetter",
    "ErrorKind",
    "ModerationRequest",
    "ModerationResult",
    "ModeratorFeedback",
    "Span",
    "Timings",
    "decode_bytes",
    "encode_bytes",
]
