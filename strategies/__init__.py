"""Flower strategies, one algorithm a file, sharing splitting/aggregation in `spry`."""

from .spry import RoundFailedError, Spry

STRATEGIES = {"spry": Spry}

__all__ = ["STRATEGIES", "RoundFailedError", "Spry"]
