#!/usr/bin/env bash
# Heo et al. 2019 (AB), CIFAR-10, Table 3 (experiment=ab_cifar10): the five pairs WRN-22-4 -> WRN-10-4,
# WRN-16-4 -> WRN-16-2, WRN-22-4 -> WRN-16-2, WRN-22-4 -> WRN-10-1, WRN-16-4 -> WRN-16-4, the students trained
# 120 epochs on 10 % of the training split, with KD, FitNet, FSP, AT, Jacobian and AB, and the students alone,
# 3 seeds; then kdrun-report --paper ab_cifar10. Three sweeps a teacher: the students alone; AB, FitNet and
# FSP (an initialisation stage, then KD: schedule=fitnet); KD, AT and Jacobian in one stage.
#
# usage: scripts/reproduce_ab_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch (each stage) on 16 random 3x8x8 images, one seed, every column on WRN-22-4 -> WRN-10-1
#             (no transfer-set cut: the 16 images are all the students get)
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/ab_cifar10, or reproduce/ab_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=ab_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
SPECS=("teacher=wrn22_4 student=wrn10_4,wrn16_2,wrn10_1" "teacher=wrn16_4 student=wrn16_2,wrn16_4")
DATA=()
if [ "$SMOKE" = 1 ]; then
    SPECS=("teacher=wrn22_4 student=wrn10_1")
    read -r -a DATA <<< "$(smoke_data 3 8 10) dataset.transfer_size=null"
fi
for spec in "${SPECS[@]}"; do
    read -r -a PAIRS <<< "$spec"
    name="${PAIRS[0]#teacher=}"
    sweep "$OUT/alone-$name" experiment=ab_cifar10 method=ce schedule=single "${PAIRS[@]}" ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/init-$name" experiment=ab_cifar10 method=ab,fitnet,fsp schedule=fitnet "${PAIRS[@]}" \
        ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/single-$name" experiment=ab_cifar10 method=kd,at,jacobian schedule=single "${PAIRS[@]}" \
        ${DATA[@]+"${DATA[@]}"}
done
report
