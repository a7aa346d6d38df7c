"""Prompt-based classification on a causal LM, LoRA only (MeZO's setting).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS
2023. Paper: arxiv.org/abs/2305.17333

Everything only this task uses lives here: the task (`task`), the template and
label words (`prompts`) and the label-word scores (`scoring`). It needs no
packages beyond the core's (transformers, peft, datasets).
"""

from .task import LMClassificationOptions, LMClassificationTask

__all__ = ["LMClassificationOptions", "LMClassificationTask"]
