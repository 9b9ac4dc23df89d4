"""The ``auto`` scorer (:mod:`.scorer`: fits the cheap scorers on folds of the target and
keeps the best weighting) and its validation arithmetic (:mod:`.validation`: folds, AUC and
recall, the paired tie test, the weight grid; NumPy only)."""
