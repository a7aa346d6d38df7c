"""TextWorld games made offline from seeds, cached, and played one command at a time.

A game is a function of its settings and its seed: `tw-make custom` (TextWorld
bundles the Inform 7 compiler, so nothing is downloaded) writes the same bytes for
the same arguments. Each game is built once into `<cache>/tips/games/`, under a
name that holds every argument (`GameSpec.stem`), behind a file lock, so the
server and the Ray workers of a run, and later runs, share one copy.

`GameSpec.quests` parallel quests give a game that many points (TextWorld scores a
quest when it is done), so a partly solved game scores partly. The walkthrough
TextWorld stores with each game is its expert demonstration.

`GameSession` wraps TextWorld's own environment (`textworld.start`, the Gym
wrapper's engine without its process pool) and cleans what the player reads: the
banner and the status line after each reply are dropped.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...cache import cache_root
from ...seeding import derive_seed

# A stream of its own (seeding.py's streams are below 100): game seeds never
# collide with a training draw of the same run seed.
STREAM_GAMES = 101
# Which pool a game belongs to: clients' games, unseen test games, the few-shot one.
POOL_TRAIN, POOL_TEST, POOL_EXAMPLE = 0, 1, 2
_STATUS = re.compile(r"\n>\s.*\Z", re.DOTALL)  # the prompt and status line


class GameError(RuntimeError):
    """A game could not be generated or opened."""


@dataclass(frozen=True)
class GameSpec:
    """The `tw-make custom` settings of one game; `seed` picks the game."""

    seed: int
    world_size: int = 3
    objects: int = 5
    quest_length: int = 3
    quests: int = 2

    @property
    def stem(self) -> str:
        """A file name holding every argument (the cache key)."""
        return (
            f"tw-w{self.world_size}-o{self.objects}-l{self.quest_length}"
            f"-q{self.quests}-s{self.seed}"
        )

    def command(self, output: Path) -> list[str]:
        """The `tw-make` command line that writes this game to `output`."""
        return [
            *tw_make(),
            "custom",
            "--world-size", str(self.world_size),
            "--nb-objects", str(self.objects),
            "--quest-length", str(self.quest_length),
            "--nb-parallel-quests", str(self.quests),
            "--seed", str(self.seed),
            "--output", str(output),
            "--silent",
            "-f",
        ]  # fmt: skip


def tw_make() -> list[str]:
    """How to run TextWorld's `tw-make` from this interpreter's environment."""
    script = Path(sys.executable).parent / "tw-make"
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("tw-make")
    if found is None:
        raise GameError("tw-make not found: pip install -e '.[tips]'")
    return [found]


def games_folder(cache_dir: str = "") -> Path:
    """Where games are kept: `cache_dir`, or `$SPRY_CACHE/tips/games`."""
    return (Path(cache_dir) if cache_dir else cache_root() / "tips") / "games"


def make_game(spec: GameSpec, folder: Path, *, timeout: float = 300.0) -> Path:
    """The game file of `spec` in `folder`: built once, then read from there."""
    path = folder / f"{spec.stem}.z8"
    if path.exists() and path.with_suffix(".json").exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{spec.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and path.with_suffix(".json").exists():
            return path
        # Built in a private folder, then moved in: a reader never sees half a game.
        staging = folder / f".{spec.stem}.{os.getpid()}"
        staging.mkdir(exist_ok=True)
        try:
            done = subprocess.run(
                spec.command(staging / path.name),
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )
            if done.returncode != 0:
                raise GameError(
                    f"tw-make failed for {spec.stem}: {done.stderr.strip()[-500:]}"
                )
            for suffix in (".json", ".ni", ".z8"):  # the .z8 last: it marks done
                built = staging / f"{spec.stem}{suffix}"
                if built.exists():
                    built.replace(folder / built.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def pool_specs(
    root_seed: int, pool: int, count: int, template: GameSpec
) -> list[GameSpec]:
    """`count` games of `pool` for a run seed: their seeds follow from both.

    TextWorld takes seeds below 2**31; `derive_seed` gives each (pool, index)
    its own.
    """
    return [
        replace(template, seed=derive_seed(root_seed, STREAM_GAMES, pool, i) % 2**31)
        for i in range(count)
    ]


def make_games(specs: Sequence[GameSpec], folder: Path) -> list[Path]:
    """Every game of `specs`, built where missing."""
    return [make_game(spec, folder) for spec in specs]


# -- playing -------------------------------------------------------------------------


def clean(text: str) -> str:
    """What the player reads: no prompt/status line, no runs of blank lines."""
    text = _STATUS.sub("", text.replace("\r\n", "\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@contextmanager
def quiet_jericho() -> Iterator[None]:
    """Without jericho's UnsupportedGameWarning, for the turns inside.

    Jericho looks for its own (Infocom) walkthrough and action lists at every
    turn and warns that a TextWorld game has none; TextWorld's own, which this
    module reads, are there.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unable to (retrieve|find)")
        yield


class GameSession:
    """One playthrough of a game file: `start`, then `step(command)` until `done`."""

    def __init__(self, path: Path | str) -> None:
        import textworld

        infos = textworld.EnvInfos(
            admissible_commands=True,
            description=True,
            objective=True,
            max_score=True,
            score=True,
            won=True,
            lost=True,
            extras=["walkthrough"],
        )
        if not Path(path).exists():
            raise GameError(f"no game at {path}")
        self.path = Path(path)
        self._env = textworld.start(str(path), request_infos=infos)
        self._state: Any = None

    def start(self) -> str:
        """Reset the game; the first observation is the room's description."""
        with quiet_jericho():
            self._state = self._env.reset()
        return clean(self._state["description"])

    def step(self, command: str) -> str:
        """Play `command`; the game's reply."""
        with quiet_jericho():
            self._state, _, _ = self._env.step(command)
        return clean(self._state["feedback"])

    @property
    def objective(self) -> str:
        return clean(self._state["objective"])

    @property
    def admissible(self) -> list[str]:
        """The commands the game accepts now, sorted (TextWorld's order varies)."""
        return sorted(self._state["admissible_commands"] or [])

    @property
    def score(self) -> int:
        return int(self._state["score"])

    @property
    def max_score(self) -> int:
        return int(self._state["max_score"])

    @property
    def done(self) -> bool:
        return bool(self._state["won"] or self._state["lost"])

    @property
    def won(self) -> bool:
        return bool(self._state["won"])

    @property
    def walkthrough(self) -> list[str]:
        """The expert demonstration TextWorld stored with the game."""
        return list(self._state["extra.walkthrough"] or [])

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> GameSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
