#!/usr/bin/env bash
# Yim et al. 2017 (FSP): the FSP stage, then the task (experiment=fsp_cifar10), CIFAR-10, with the
# student alone as baseline, 3 seeds; then kdrun-report --paper fsp_cifar10 (Table 3's teacher, student
# and FSP numbers, as Gou et al.'s survey quotes them: kdrun/papers/fsp_cifar10.json).
#
# usage: scripts/reproduce_fsp_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch (each stage) on 16 random 3x8x8 images, one seed, without the student-alone runs
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/fsp_cifar10, or reproduce/fsp_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=fsp_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
alone_and_preset schedule.init.epochs=1 schedule.init.milestones=[]
report
