"""SFT: supervised fine-tuning of a causal LM on prompt -> response pairs, LoRA only.

Everything only this task uses lives here: the task (`task`: data, exact match of
greedy answers) and its offline default (`reviews`: questions about the shipped
Rotten Tomatoes reviews whose answers a rule decides). It needs no packages beyond
the core's (transformers, PEFT, datasets).
"""

from .task import SFTTask

__all__ = ["SFTTask"]
