"""Nested mappings of arrays <-> flat "a/b/c" keys, for files that hold flat names.

A checkpoint is one `.npz` file, whose entries have flat names, while what it saves
is nested: the weights and the strategy's state, the strategy's state holding the
server optimizer's moments ("optimizer/m/<tensor>") or FwdLLM's pool
("fwdllm/pool/<i>/<tensor>"). One pair of functions packs and unpacks every level,
so the key format is written once. A path segment must not contain the separator
(torch's parameter names never do: their separator is "."); `flatten` refuses one
that does rather than write a key that would come back at another depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEP = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of `tree` under keys joining their path with "/".

    A leaf is anything that is not a Mapping; an empty Mapping leaves no key.

    >>> flatten({"optimizer": {"m": {"w": 1}, "v": {"w": 2}}})
    {'optimizer/m/w': 1, 'optimizer/v/w': 2}
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key)
        if not key or SEP in key:
            raise ValueError(f"key {key!r} under {prefix!r} is empty or holds {SEP!r}")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + SEP))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The nested mapping `flatten` made `flat` from (insertion order kept).

    >>> unflatten({"optimizer/m/w": 1, "optimizer/v/w": 2})
    {'optimizer': {'m': {'w': 1}, 'v': {'w': 2}}}
    """
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *branches, leaf = key.split(SEP)
        node = tree
        for branch in branches:
            node = node.setdefault(branch, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r}: {branch!r} is both a leaf and a branch")
        if leaf in node:
            raise ValueError(f"key {key!r} is both a leaf and a branch")
        node[leaf] = value
    return tree
