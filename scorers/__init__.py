"""Scorers: one module per method, each implementing :class:`dataselect.scoring.Scorer`.

``SCORERS`` maps the names used on the command line and in recipes to their classes.
"""

from scorers.bads import Bads
from scorers.dsir import DSIR
from scorers.embed import Embed
from scorers.fasttext import FastText
from scorers.less import Less
from scorers.zipfit import ZipFit

SCORERS = {cls.name: cls for cls in (Bads, DSIR, Embed, FastText, Less, ZipFit)}

__all__ = ["DSIR", "SCORERS", "Bads", "Embed", "FastText", "Less", "ZipFit"]
