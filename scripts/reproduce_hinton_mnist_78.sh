#!/usr/bin/env bash
# Hinton et al. 2015, MNIST, only 7s and 8s in the transfer set (experiment=hinton_mnist_78): the 2x800 student
# distilled at T = 20 from experiment=hinton_mnist's 2x1200 teacher (trained on every class) on the training
# 7s and 8s alone, evaluated with and without the biases of 7 and 8 lowered by 7.6, 3 seeds, then the report
# beside the paper's 47.3% and 13.2% test errors (kdrun-report --paper hinton_mnist_78).
#
# usage: scripts/reproduce_hinton_mnist_78.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   the same table, 1 epoch on 16 random 1x8x8 images (a test, not a reproduction)
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/hinton_mnist_78, or reproduce/hinton_mnist_78-smoke)
#   OVERRIDE  more kdrun overrides, e.g. dataset.root=~/data dataset.val_size=10000 (the best shifts of 7 and 8
#             on a validation split besides; the teacher then trains on the other 50,000 images)
# Needs MNIST under dataset.root (or dataset.download=true). Rerunning skips the finished runs; the teacher
# is experiment=hinton_mnist's (scripts/reproduce_hinton_mnist.sh), from the cache when that ran first.
TABLE=hinton_mnist_78
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
DATA=()
[ "$SMOKE" = 1 ] && read -r -a DATA <<< "$(smoke_data 1 8 10)"
sweep "$OUT" experiment=hinton_mnist_78 ${DATA[@]+"${DATA[@]}"}
report
