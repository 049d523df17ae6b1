#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv the tests use to drive the engine simulator with
# the official `openai` client. The venv lives outside the work tree, keyed by a hash of the
# pinned requirements below, so changing a pin builds a fresh one and never mutates an old one.
#
# Usage: hack/python-env.sh        -> prints progress on stderr, the venv's python as LAST line
# Env:   MUSTER_CACHE (default ~/.cache/muster), PYTHON (default python3)
set -euo pipefail

# Exact versions of openai and everything it pulls in (pip freeze of a clean install).
REQUIREMENTS='annotated-types==0.8.0
anyio==4.16.0
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
jiter==0.19.0
openai==3.54.0
pydantic==2.14.3
pydantic_core==2.50.4
sniffio==1.3.1
truststore==0.10.5
typing-inspection==0.4.5
typing_extensions==4.16.0'

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "python-env: $PYTHON not found" >&2
    exit 2
fi
cache="${MUSTER_CACHE:-$HOME/.cache/muster}"
py_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
key="$(printf '%s\n%s\n' "$py_version" "$REQUIREMENTS" | sha256sum | cut -c1-16)"
venv="$cache/venv-$key"

if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
    echo "python-env: reusing $venv" >&2
else
    echo "python-env: creating $venv (Python $py_version, openai pinned)" >&2
    # A venv without the .complete marker is a leftover of an interrupted install: rebuild it.
    rm -rf "$venv"
    mkdir -p "$cache"
    "$PYTHON" -m venv "$venv"
    printf '%s\n' "$REQUIREMENTS" > "$venv/requirements.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$venv/requirements.txt" >&2
    touch "$venv/.complete"
fi
echo "$venv/bin/python"
