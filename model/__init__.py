"""modstream's model: tokenizer, vocabulary, packed-LSTM classifier, checkpoints and
the shared inference `Engine`. Knows nothing about Kafka or the worker.

The package imports nothing itself, so light modules (`model.errors`, `model.tokenizer`)
load without torch; import what you use from its module.
"""
