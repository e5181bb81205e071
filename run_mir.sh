#!/usr/bin/env bash
# A method (--model, default dadh) on MIRFlickr-25K with its published settings (its
# SETTINGS['mir'], none for DADH), then its test:
#   ./run_mir.sh BIT [--model NAME] [--seeds 1,2,3] [--option value ...]
# --seeds trains and tests once per seed, in <checkpoint_dir>/seed<N>/ (see train_test.sh).
set -euo pipefail
bit=${1:?usage: ./run_mir.sh BIT [--model NAME] [--seeds 1,2,3] [--option value ...]}
shift
settings=$("$(dirname "$0")/settings.sh" mir "$@")
exec "$(dirname "$0")/train_test.sh" --flag mir --bit "$bit" $settings "$@"
