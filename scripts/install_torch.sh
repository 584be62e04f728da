#!/usr/bin/env bash
# Installs torch into a virtual environment before the package, so the `server` extra's unpinned torch
# requirement is already met and pip never chooses the build. Used by `make setup`.
#
#   scripts/install_torch.sh PIP TORCH_SPEC [TORCH_INDEX_URL]
#
# Order, first that works:
#   1. a wheel pip finds without any index (a `find-links` directory in the pip configuration, or one
#      already installed): nothing is downloaded;
#   2. TORCH_INDEX_URL (PyTorch's CPU index by default in the Makefile), asked for torch alone;
#   3. the ordinary package index, with a warning: on Linux x86-64 PyPI's torch is the CUDA build
#      (~2.7 GB). An unreachable PyTorch index therefore never stops the install (CI has PyPI only).
# torch's own dependencies always come from the ordinary index.
set -euo pipefail
PIP=$1
SPEC=$2
INDEX_URL=${3:-}

echo "==> torch: $SPEC, first from a wheel pip finds without an index (find-links, or already installed)"
if "$PIP" install -q --no-index --no-deps "$SPEC" >/dev/null 2>&1; then
  echo "==> torch: installed from that wheel, nothing downloaded"
elif [ -n "$INDEX_URL" ] && {
  echo "==> torch: downloading $SPEC from $INDEX_URL"
  "$PIP" install --no-deps --timeout 20 --retries 1 --index-url "$INDEX_URL" "$SPEC"
}; then
  :
else
  if [ -n "$INDEX_URL" ]; then
    echo "==> torch: $INDEX_URL is not reachable or has no $SPEC; falling back to the default index" >&2
  fi
  echo "==> torch: downloading $SPEC from the default index (on Linux x86-64 the CUDA build, ~2.7 GB)" >&2
  "$PIP" install --no-deps "$SPEC"
fi
echo "==> torch: its dependencies"
"$PIP" install -q "$SPEC"
"$(dirname "$PIP")/python" -c "import importlib.metadata as m; print('==> torch', m.version('torch'), 'installed')"
