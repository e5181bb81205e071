#!/usr/bin/env bash
# The published settings of the --model among the options given (default dadh) on data set FLAG,
# as command-line words (config.settings): ./settings.sh FLAG [--option value ...]
set -euo pipefail
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
flag=$1 model=dadh
shift
while (($#)); do
  case $1 in
    --model) model=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
    --model=*) model=${1#*=}; shift ;;
    *) shift ;;
  esac
done
cd "$(dirname "$0")"
# an unknown --model gives none here: main.py then refuses it in one line
exec "$python" -c 'import sys, config
print(config.settings(*sys.argv[1:]) if sys.argv[1] in config.METHODS else "")' "$model" "$flag"
