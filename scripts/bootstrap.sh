#!/usr/bin/env bash
# Creates .venv and installs switchgen into it (editable, with test extras) when pyproject.toml
# or constraints.txt changed since the last install. Sourced by scripts/switchgen and scripts/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SWITCHGEN_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.switchgen-installed-$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "switchgen: setting up $VENV (first run only)..." >&2
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "switchgen: needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: letting a dependency pull it in picks whatever build is newest.
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" torch
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
  rm -f "$VENV"/.switchgen-installed-*
  touch "$stamp"
fi
