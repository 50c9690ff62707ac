#!/usr/bin/env bash
# Heo et al. 2019 (AB), Table 3: the AB initialisation, then KD (experiment=ab_cifar10), CIFAR-10, with the
# student alone as baseline, 3 seeds; then kdrun-report --paper ab_cifar10 (the published numbers could
# not be found: kdrun/papers/ab_cifar10.json says so).
#
# usage: scripts/reproduce_ab_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch (each stage) on 16 random 3x8x8 images, one seed, without the student-alone runs
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/ab_cifar10, or reproduce/ab_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=ab_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
alone_and_preset
report
