#!/usr/bin/env bash
# Docker Compose v2 as a project-local CLI plugin, for `docker compose config` in the
# tests (tests/deploy) on machines whose docker CLI has no compose plugin.
#
#   scripts/fetch_compose.sh [DIR]        (default .tools)
#
# Installs DIR/docker-config/cli-plugins/docker-compose; run docker with
# DOCKER_CONFIG=DIR/docker-config to use it. Nothing outside DIR is touched.
#
# Source: Debian trixie's docker-compose 2.26.1-4 (a static Go binary needing only
# glibc >= 2.34), fetched from the Debian archive and checked against the sha256 below,
# recorded when the pin was made (2026-11-27). Idempotent: an installed plugin of the
# pinned version is kept.
set -euo pipefail

VERSION=2.26.1-4
POOL=http://deb.debian.org/debian/pool/main/d/docker-compose
declare -A SHA256=(
  [amd64]=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
  [arm64]=bbafaa666f3e7fa00ad36f2a8bab889f1c791ca8743d674e7267a3d07203869c
)

cd "$(dirname "$0")/.."
dir=${1:-.tools}
plugin="$dir/docker-config/cli-plugins/docker-compose"
stamp="$dir/docker-compose.version"
if [[ -x $plugin && $(cat "$stamp" 2>/dev/null) == "$VERSION" ]]; then
  exit 0
fi

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "fetch_compose.sh: no pinned docker-compose for $(uname -m)" >&2; exit 1 ;;
esac
for tool in curl dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || { echo "fetch_compose.sh needs $tool" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deb="docker-compose_${VERSION}_${arch}.deb"
if ! curl -fsSL --retry 3 --max-time 300 -o "$work/$deb" "$POOL/$deb"; then
  echo "fetch_compose.sh: could not download $POOL/$deb" >&2
  exit 1
fi
echo "${SHA256[$arch]}  $work/$deb" | sha256sum --check --quiet - || {
  echo "fetch_compose.sh: $deb does not match the pinned sha256" >&2
  exit 1
}
dpkg-deb -x "$work/$deb" "$work/root"
mkdir -p "$(dirname "$plugin")"
install -m 755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
echo "$VERSION" > "$stamp"
echo "fetch_compose.sh: installed docker-compose $VERSION ($arch) at $plugin"
