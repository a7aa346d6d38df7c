#!/usr/bin/env bash
# The SuperLink of a real deployment, with TLS and SuperNode authentication on.
#
#   scripts/superlink.sh CERTS [HOST] [PORT]
#
# CERTS  a folder from scripts/make_certs.sh (ca.crt, server.pem, server.key)
# HOST   the address to listen on: 0.0.0.0 for every interface (default 127.0.0.1)
# PORT   flwr 1.42 serves the Fleet, Control and Runtime APIs over HTTPS on this one
#        port (default 8000)
#
# Only SuperNodes whose public key was registered (`flwr supernode register`) may
# connect. SPRY_SUPERLINK_DB=path keeps registrations and runs across restarts (in
# memory otherwise). The app's dependencies must already be installed here: the
# SuperLink does not try to install them at run time.
set -euo pipefail
[[ $# -ge 1 && -d $1 ]] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
certs=$1 host=${2:-127.0.0.1} port=${3:-8000}
for file in ca.crt server.pem server.key; do
  [[ -r $certs/$file ]] || { echo "superlink.sh: $certs/$file is missing" >&2; exit 2; }
done
database=()
[[ -n ${SPRY_SUPERLINK_DB:-} ]] && database=(--database "$SPRY_SUPERLINK_DB")
exec flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" \
  --ssl-certfile "$certs/server.pem" \
  --ssl-keyfile "$certs/server.key" \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --host "$host" --port "$port" \
  "${database[@]}"
