#!/usr/bin/env bash
# FitNets (Romero et al. 2015), CIFAR-10, Table 5: the maxout teacher (trained once) and FitNet 1-4, each
# with hints, then KD (experiment=fitnet_cifar10), with each student alone as baseline, 3 seeds; then
# kdrun-report --paper fitnet_cifar10.
#
# usage: scripts/reproduce_fitnet_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch (each stage) on 16 random 3x32x32 images (CIFAR's size), one
#             seed, without the student-alone runs
#   --teacher-seed  the teacher's seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/fitnet_cifar10, or reproduce/fitnet_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=fitnet_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
STUDENTS=student=fitnet1,fitnet2,fitnet3,fitnet4
data=()
# the teacher's linear lr decay needs its end epoch: a 1-epoch smoke run steps instead
[ "$SMOKE" = 1 ] && read -r -a data <<< "$(smoke_data 3 32 10) teacher.train.lr_decay=step"
[ "$SMOKE" = 1 ] || sweep "$OUT/alone" "experiment=$TABLE" method=ce schedule=single "$STUDENTS"
sweep "$OUT/method" "experiment=$TABLE" "$STUDENTS" ${data[@]+"${data[@]}"}
report
