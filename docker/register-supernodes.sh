#!/bin/sh
# Register every SuperNode public key in the certs directory with the SuperLink.
#
# Flower 1.42's node authentication is CLI-managed: a SuperLink started with
# --enable-supernode-auth admits only SuperNodes whose public key was registered through
# its Control API (`flwr supernode register KEY CONNECTION`). compose.yml runs this once,
# after the SuperLink is healthy and before any SuperNode starts.
#
#   SPRY_SUPERLINK  Control API address (default superlink:8000, the compose service)
#   SPRY_CERTS_DIR  ca.crt and supernode-*.pub from scripts/make_certs.sh (default /certs)
#
# A key that is already registered (a SuperLink with a persistent --database, or a
# second `docker compose up`) counts as registered rather than failing the whole run.
set -eu

superlink=${SPRY_SUPERLINK:-superlink:8000}
certs=${SPRY_CERTS_DIR:-/certs}
# The CLI reads its connections from $FLWR_HOME/config.toml; keep it private to this run
FLWR_HOME=$(mktemp -d)
export FLWR_HOME
trap 'rm -rf "$FLWR_HOME"' EXIT
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "spry"

[superlink.spry]
address = "$superlink"
root-certificates = "$certs/ca.crt"
EOF

count=0
for key in "$certs"/supernode-*.pub; do
  if [ ! -e "$key" ]; then
    echo "register-supernodes: no $certs/supernode-*.pub; run scripts/make_certs.sh" >&2
    exit 1
  fi
  if out=$(flwr supernode register "$key" spry 2>&1); then
    echo "$out"
  elif echo "$out" | grep -q "already in use"; then
    echo "$key: already registered"
  else
    echo "$out" >&2
    exit 1
  fi
  count=$((count + 1))
done
echo "register-supernodes: $count SuperNode keys registered with $superlink"
