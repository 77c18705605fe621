#!/usr/bin/env bash
# The web-export tests run the exported page offline, with onnxruntime-web copied in beside it. Install the
# pinned package into a cache folder (CHARLOOM_ORT_WEB, default ~/.cache/charloom/ort-web) when it is not
# there yet; when it cannot be installed (no npm, no network), say so in one line: those tests then skip.
# Never fails the test run by itself.
VERSION=1.31.1  # export.ORT_WEB_VERSION
DEST="${CHARLOOM_ORT_WEB:-$HOME/.cache/charloom/ort-web}"
PACKAGE="$DEST/node_modules/onnxruntime-web"
if [ -f "$PACKAGE/dist/ort.wasm.min.mjs" ] \
   && grep -q "\"version\": \"$VERSION\"" "$PACKAGE/package.json" 2>/dev/null; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing, so onnxruntime-web $VERSION cannot be installed: the web-export tests will skip" >&2
  exit 0
fi
if ! mkdir -p "$DEST" 2>/dev/null; then
  echo "cannot create $DEST for onnxruntime-web: the web-export tests will skip" >&2
  exit 0
fi
if log=$(npm install --prefix "$DEST" --no-save --no-audit --no-fund --ignore-scripts --fetch-retries=1 \
           --loglevel=error "onnxruntime-web@$VERSION" 2>&1) && [ -f "$PACKAGE/dist/ort.wasm.min.mjs" ]; then
  echo "installed onnxruntime-web $VERSION into $DEST for the web-export tests"
  exit 0
fi
reason=$(printf '%s\n' "$log" | grep -m1 -iE 'ERR|error' | sed -E 's/^npm (ERR!|error) *//')
echo "could not install onnxruntime-web $VERSION with npm (${reason:-no reason given}): the web-export tests" \
     "will skip" >&2
exit 0
