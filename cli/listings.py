"""What `spry config`, `spry devices` and `spry tasks` print.

`spry config` lists each key with its default and help, and for a key whose value
names something registered, the names, read from the registries themselves (the
resolving step's, the strategies', the tasks'), so no list is written twice; then
each strategy's own options (`<strategy>.<option>`), read from its `Options`.
`spry tasks` lists each task's options.
"""

from __future__ import annotations

import dataclasses

from spry.config import ConfigError, RunConfig


def _registered_names() -> dict[str, tuple[str, ...]]:
    from spry.resolve import named_choices
    from spry.tasks import available
    from strategies import STRATEGIES

    return {
        **named_choices(),
        "strategy": tuple(STRATEGIES),
        "task": tuple(available()),
    }


def print_config() -> None:
    """Every key by section, then each strategy's own options (`spry tasks`: tasks')."""
    from strategies import STRATEGIES

    names = _registered_names()
    for name, section in RunConfig.SECTIONS.items():
        print(f"[{name}]")
        for f in dataclasses.fields(section):
            key = f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if key in names:
                help_text += f" [{', '.join(names[key])}]"
            print(f"  {key:24} = {f.default!r:22} {help_text}")
    print("[strategy options]  (`<strategy>.<option>`; `spry tasks` lists tasks')")
    for strategy, cls in STRATEGIES.items():
        for f in dataclasses.fields(cls.Options):
            key = f"{strategy}.{f.name.replace('_', '-')}"
            print(f"  {key:24} = {f.default!r:22} {f.metadata.get('help', '')}")


def print_devices(catalog_path: str = "") -> None:
    from spry.devices import load_catalog

    print(f"{'profile':14} {'budget MiB':>10} {'speed':>6}")
    for profile in load_catalog(catalog_path).values():
        print(f"{profile.name:14} {profile.budget_mib:>10.0f} {profile.speed:>6g}")
    print(
        "\nbudget: peak memory its training process may use; speed: relative to one "
        "simulated client on this host.\nUse: --set device-profiles=phone-4gb:0.5,"
        "laptop-16gb:0.5 (add profiles with --set device-catalog=FILE.toml)"
    )


def print_tasks() -> None:
    """The registered tasks, one line each, and their options."""
    from spry.tasks import available, get

    for name in available():
        try:
            task = get(name)
        except ConfigError as error:
            print(f"{name:16s} (cannot load: {error})")
            continue
        print(f"{name:16s} {task.summary}")
        for option in task.Options.keys():
            default = getattr(task.Options(), option.replace("-", "_"))
            print(f"{'':16s}   {name}.{option} = {default!r}")
        if task.run_defaults:
            tuned = ", ".join(f"{k}={v}" for k, v in task.run_defaults.items())
            print(f"{'':16s}   run settings it applies: {tuned}")
        for method, values in task.method_defaults.items():
            tuned = ", ".join(f"{k}={v}" for k, v in values.items())
            print(f"{'':16s}   under --method {method}: {tuned}")
    print(
        "\nUse: spry run --task NAME [--set NAME.OPTION=VALUE]; add a task with an "
        '[project.entry-points."spry.tasks"] entry in your package'
    )
