"""``peffnet study``: the paper's Figure 1 on the user's own hardware -- which group size, normalization and
resolution regime gives the best accuracy for the training time spent here."""

from peffnet.study.config import StudyConfig
from peffnet.study.run import run_study

__all__ = ["StudyConfig", "run_study"]
