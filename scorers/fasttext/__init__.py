"""The ``fasttext`` scorer (:mod:`.scorer`) and the file its training process runs
(:mod:`.train`: run by path in a fresh interpreter, it imports fastText only)."""
