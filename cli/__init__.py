"""The command line, `spry`: the composition root.

It wires the library (`spry/`), the strategies, the ServerApp and the ClientApp
into one command, so it may import all of them, and nothing imports it
(ARCHITECTURE.md; `tests/test_layering.py` checks both). `main` holds the parser,
`run` the simulation, `listings` what `spry config|devices|tasks` print.
"""
