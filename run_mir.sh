#!/usr/bin/env bash
# DADH on MIRFlickr-25K with the published settings, then its test: ./run_mir.sh BIT [--option value ...]
set -euo pipefail
bit=${1:?usage: ./run_mir.sh BIT [--option value ...]}
shift
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$python" main.py train --flag mir --bit "$bit" "$@"
"$python" main.py test --flag mir --bit "$bit" "$@"
