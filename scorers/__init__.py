"""Scorers: one module per method, each implementing :class:`dataselect.scoring.Scorer`.

``SCORERS`` maps the names used on the command line and in recipes to their classes.
"""

from scorers.dsir import DSIR

SCORERS = {DSIR.name: DSIR}

__all__ = ["DSIR", "SCORERS"]
