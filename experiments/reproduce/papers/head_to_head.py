"""The head-to-head comparison (:mod:`experiments.head_to_head`) as a ``gpusched reproduce`` experiment."""
from experiments.head_to_head import EXPERIMENT
from experiments.reproduce.registry import register

register(EXPERIMENT)
