"""Client-side tasks: what a client learns and how it is scored."""

from .classification import ClassificationTask, load_task

__all__ = ["ClassificationTask", "load_task"]
