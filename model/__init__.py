"""modstream's model: tokenizer, vocabulary, packed-LSTM classifier, checkpoints and
the shared inference `Engine`. Knows nothing about Kafka or the worker."""

from model.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMissingError,
    CheckpointVersionError,
    LoadedCheckpoint,
    default_checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from model.data import LABELS, DataNotFoundError, DataSplits, Example, load_splits
from model.engine import Engine, EngineError, Scores
from model.network import Classifier, ModelConfig
from model.tokenizer import TOKENIZER_VERSION, tokenize
from model.vocab import PAD_ID, UNK_ID, Vocab

__all__ = [
    "LABELS",
    "PAD_ID",
    "TOKENIZER_VERSION",
    "UNK_ID",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointMissingError",
    "CheckpointVersionError",
    "Classifier",
    "DataNotFoundError",
    "DataSplits",
    "Engine",
    "EngineError",
    "Example",
    "LoadedCheckpoint",
    "ModelConfig",
    "Scores",
    "Vocab",
    "default_checkpoint_dir",
    "load_checkpoint",
    "load_splits",
    "save_checkpoint",
    "tokenize",
]
