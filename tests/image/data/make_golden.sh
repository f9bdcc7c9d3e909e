#!/bin/sh
# Regenerates the *.names golden files in this folder from the fixtures with
# GNU tar (not with thinp): one member name per line, "./" prefix and trailing
# "/" stripped, the root "." entry dropped.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fx=${FIXTURES:-$here/../../../../shared/fixtures}
norm() { sed -e 's#^\./##' -e 's#/$##' | grep -v '^\.\?$' || true; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
tar xf "$fx/images/test-docker-image.tar" -C "$tmp" manifest.json
l0=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))[0]['Layers'][0])" "$tmp/manifest.json")
tar xOf "$fx/images/test-docker-image.tar" "$l0" | tar tf - | norm > "$here/dive-layer0.names"
tar xOf "$fx/images/test-docker-image.tar" "$l0" | tar tvf - | awk '$1 ~ /^h/ {print $6}' | norm > "$here/dive-layer0-hardlinks.names"
for p in debian-busybox debian-nginx-common debian-nginx; do
  tar tf "$fx/layers/$p.data.tar" | norm > "$here/$p.names"
done
