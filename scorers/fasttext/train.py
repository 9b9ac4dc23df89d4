"""Entry point of fastText's training process: :func:`main` with ``[TRAIN_FILE,
MODEL_FILE, PARAMS_JSON]``.

:mod:`scorers.fasttext.scorer` runs this file in a fresh interpreter for every model it trains
(why a fresh one: :class:`scorers.fasttext.TrainingProcess`). It imports fastText and
nothing of the data stack, not even this package: the scorer module's own imports (pandas,
Dask, Arrow) took 1.2–1.4 s per process against 0.2 s for fastText's, as long as training
a small model does, and ``auto`` trains one model per fold.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> None:
    """Train one supervised model on ``argv[0]`` with the settings ``argv[2]`` (JSON) and
    save it to ``argv[1]``."""
    import fasttext

    train_path, model_path, params = argv[0], argv[1], json.loads(argv[2])
    fasttext.train_supervised(input=train_path, **params).save_model(model_path)


if __name__ == "__main__":
    main(sys.argv[1:])
