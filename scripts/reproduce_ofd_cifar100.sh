#!/usr/bin/env bash
# Heo et al. 2019 (OFD), CIFAR-100 (experiment=ofd_cifar100): teacher WRN 28-4 and the students WRN 16-4,
# WRN 28-2, WRN 16-2 and ResNet 56 of the paper's settings (a)-(d), each alone and with OFD, 3 seeds: one
# `kdrun -m` sweep of 2 methods x 4 students, 24 runs; the teacher is trained once (its seed pinned, see
# --teacher-seed) and shared through the teacher cache. Then the report beside the paper's numbers
# (kdrun-report --paper ofd_cifar100).
#
# usage: scripts/reproduce_ofd_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, both rows for the WRN 16-2 student
#   --teacher-seed  the teacher's seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/ofd_cifar100, or reproduce/ofd_cifar100-smoke)
#   OVERRIDE  more kdrun overrides, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu
# Needs CIFAR-100 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=ofd_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
if [ "$SMOKE" = 1 ]; then
    read -r -a DATA <<< "$(smoke_data 3 8 100)"
    sweep "$OUT/table" experiment=ofd_cifar100 method=ce,ofd student=wrn16_2 "${DATA[@]}"
else
    sweep "$OUT/table" experiment=ofd_cifar100 method=ce,ofd student=wrn16_4,wrn28_2,wrn16_2,resnet56
fi
report
