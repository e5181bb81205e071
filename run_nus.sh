#!/usr/bin/env bash
# DADH on NUS-WIDE with the published settings (lr 1e-5, dropout), then its test: ./run_nus.sh BIT [--option value ...]
set -euo pipefail
bit=${1:?usage: ./run_nus.sh BIT [--option value ...]}
shift
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$python" main.py train --flag nus --bit "$bit" --lr 1e-5 --dropout True "$@"
"$python" main.py test --flag nus --bit "$bit" --lr 1e-5 --dropout True "$@"
