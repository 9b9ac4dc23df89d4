"""Scorers: one module per method, each implementing :class:`dataselect.scoring.Scorer`.

``SCORERS`` maps the names used on the command line and in recipes to their classes.
"""

from scorers.dsir import DSIR
from scorers.fasttext import FastText
from scorers.less import Less
from scorers.zipfit import ZipFit

SCORERS = {DSIR.name: DSIR, FastText.name: FastText, Less.name: Less, ZipFit.name: ZipFit}

__all__ = ["DSIR", "SCORERS", "FastText", "Less", "ZipFit"]
