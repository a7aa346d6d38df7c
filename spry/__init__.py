"""Spry: federated forward-mode fine-tuning, and the methods it is compared with.

The library: gradient engines, weight splitting, aggregation, models, data,
memory measurement, config and the command line. It imports nothing from
`strategies/`, `server/` or `clients/`.
"""

__version__ = "0.1.0"
