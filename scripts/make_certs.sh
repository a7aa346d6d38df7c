#!/usr/bin/env bash
# Certificates and SuperNode keys for a local deployment (testing, a lab, a home fleet).
#
#   scripts/make_certs.sh DIR [--nodes N] [ADDRESS ...]
#
# DIR/ca.crt, ca.key          a throwaway certificate authority
# DIR/server.pem, server.key  the SuperLink's TLS certificate, signed by that CA, naming
#                             localhost, 127.0.0.1, `superlink` (the compose service) and
#                             every ADDRESS given (an IP or a host name SuperNodes dial)
# DIR/supernode-I, .pub       N SuperNode key pairs (ECDSA P-384, OpenSSH format) for
#                             Flower's node authentication; register each .pub with
#                             `flwr supernode register`
#
# For production use your own CA; a SuperNode checks the SuperLink's name against the
# certificate, so an address missing here fails the TLS handshake.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
out=$1; shift
nodes=2
addresses=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes) [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "--nodes needs a count" >&2; exit 2; }
             nodes=$2; shift 2 ;;
    -h|--help) usage ;;
    *) addresses+=("$1"); shift ;;
  esac
done
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "make_certs.sh needs $tool" >&2; exit 1; }
done

mkdir -p "$out"
cd "$out"
san="DNS:localhost,IP:127.0.0.1,DNS:superlink"
for address in "${addresses[@]}"; do
  if [[ $address =~ ^[0-9.]+$ || $address == *:* ]]; then
    san+=",IP:$address"
  else
    san+=",DNS:$address"
  fi
done

openssl req -x509 -newkey rsa:4096 -nodes -days 365 -sha256 \
  -keyout ca.key -out ca.crt -subj "/CN=Spry local CA" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -sha256 \
  -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -days 365 -sha256 -out server.pem \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null
rm -f server.csr ca.srl

for ((i = 0; i < nodes; i++)); do
  rm -f "supernode-$i" "supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "spry-supernode-$i" -f "supernode-$i"
done
chmod 600 ./*.key supernode-* 2>/dev/null || true
chmod 644 ./*.crt ./*.pem ./*.pub 2>/dev/null || true
echo "wrote CA, SuperLink certificate ($san) and $nodes SuperNode key pairs to $PWD"
