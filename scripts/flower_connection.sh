#!/usr/bin/env bash
# Name a TLS SuperLink in Flower's configuration file, so that `flwr run . NAME` and
# `flwr supernode register KEY.pub NAME` reach it.
#
#   scripts/flower_connection.sh NAME HOST:PORT CA_CERT
#
# Writes [superlink.NAME] into $FLWR_HOME/config.toml (default ~/.flwr), replacing
# an entry of that name; other connections are kept. Run it with the Python that has
# flwr installed (it uses tomli_w, which flwr depends on).
set -euo pipefail
[[ $# -eq 3 ]] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ -r $3 ]] || { echo "flower_connection.sh: CA certificate $3 is missing" >&2; exit 2; }
python3 - "$1" "$2" "$(realpath "$3")" <<'PY'
import os, sys, tomllib
from pathlib import Path

import tomli_w  # comes with flwr

name, address, ca = sys.argv[1:]
home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
path = home / "config.toml"
config = tomllib.loads(path.read_text()) if path.exists() else {}
superlink = config.setdefault("superlink", {})
superlink.setdefault("default", name)
superlink[name] = {"address": address, "root-certificates": ca}
home.mkdir(parents=True, exist_ok=True)
path.write_text(tomli_w.dumps(config))
print(f"{path}: [superlink.{name}] address = {address}, root-certificates = {ca}")
PY
