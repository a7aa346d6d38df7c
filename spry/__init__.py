"""Spry: federated forward-mode fine-tuning, and the methods it is compared with.

The library: gradient engines, weight splitting, aggregation, models, data, memory
measurement, the run config and its resolving step, and the task interface with
the tasks' packages (`spry/tasks/`). It imports nothing from `strategies/`,
`server/`, `clients/` or `cli/` (the command line); ARCHITECTURE.md has the layers
and `tests/test_layering.py` checks them.
"""

__version__ = "0.1.0"
