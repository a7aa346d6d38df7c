#!/usr/bin/env bash
# One SuperNode of a real deployment: it dials the SuperLink over TLS and signs its
# requests with its own private key (registered beforehand with
# `flwr supernode register KEY.pub CONNECTION`).
#
#   scripts/supernode.sh CA_CERT KEY PARTITION NUM_PARTITIONS SUPERLINK [PORT]
#
# CA_CERT    the CA that signed the SuperLink's certificate (ca.crt)
# KEY        this node's private key (supernode-I from scripts/make_certs.sh)
# PARTITION  which of the NUM_PARTITIONS data partitions this device holds
# SUPERLINK  host:port of the SuperLink; the host must be named in its certificate
# PORT       this node's local ClientApp API port (default 9094; give each SuperNode
#            on one machine its own)
set -euo pipefail
[[ $# -ge 5 ]] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ca=$1 key=$2 partition=$3 partitions=$4 superlink=$5 port=${6:-9094}
[[ -r $ca ]] || { echo "supernode.sh: CA certificate $ca is missing" >&2; exit 2; }
[[ -r $key ]] || { echo "supernode.sh: private key $key is missing" >&2; exit 2; }
if ! [[ $partition =~ ^[0-9]+$ && $partitions =~ ^[0-9]+$ ]] \
   || ((partition >= partitions)); then
  echo "supernode.sh: PARTITION must be in 0..NUM_PARTITIONS-1" >&2; exit 2
fi
exec flower-supernode \
  --root-certificates "$ca" \
  --superlink "$superlink" \
  --auth-supernode-private-key "$key" \
  --node-config "partition-id=$partition num-partitions=$partitions" \
  --port "$port"
