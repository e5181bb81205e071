#!/usr/bin/env bash
# Every method's published setting on MIRFlickr-25K (its SETTINGS in models/), then its test:
#   ./run_mir.sh BIT [--models dadh,agah,dcmh,ssah] [--seeds 1,2,3] [--split FILE] [--option value ...]
# --models and --seeds make a sweep that resumes where it stopped; see train_test.sh.
set -euo pipefail
bit=${1:?usage: ./run_mir.sh BIT [--models dadh,agah,dcmh,ssah] [--seeds 1,2,3] [--option value ...]}
shift
exec "$(dirname "$0")/train_test.sh" --flag mir --bit "$bit" "$@"
