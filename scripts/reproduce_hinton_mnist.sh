#!/usr/bin/env bash
# Hinton et al. 2015, MNIST (experiment=hinton_mnist): the 2x1200 teacher with dropout and jitter, the
# 2x800 student alone (method=ce) and distilled at T = 20 (method=kd), 3 seeds, then the report beside
# the paper's 67, 146 and 74 test errors (kdrun-report --paper hinton_mnist).
#
# usage: scripts/reproduce_hinton_mnist.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   the same table, 1 epoch on 16 random 1x8x8 images (a test, not a reproduction)
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/hinton_mnist, or reproduce/hinton_mnist-smoke)
#   OVERRIDE  more kdrun overrides, e.g. dataset.root=~/data hydra/launcher=local_gpus
# Needs MNIST under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=hinton_mnist
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
DATA=()
[ "$SMOKE" = 1 ] && read -r -a DATA <<< "$(smoke_data 1 8 10)"
sweep "$OUT" experiment=hinton_mnist method=ce,kd ${DATA[@]+"${DATA[@]}"}
report
