#!/usr/bin/env bash
# Furlanello et al. 2018 (born-again networks), CIFAR-100 (experiment=ban_cifar100): for WRN-28-1, -2 and
# -10 (Table 3), a teacher, then 3 born-again generations of the same architecture and their ensemble,
# 3 seeds; then kdrun-report --paper ban_cifar100.
#
# usage: scripts/reproduce_ban_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, WRN-28-1 only, 2 generations
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/ban_cifar100, or reproduce/ban_cifar100-smoke)
# Needs CIFAR-100 under dataset.root. Rerunning skips the finished runs.
TABLE=ban_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
NETS=wrn28_1,wrn28_2,wrn28_10
DATA=()
if [ "$SMOKE" = 1 ]; then
    NETS=wrn28_1
    read -r -a DATA <<< "$(smoke_data 3 8 100) schedule.generations=2"
fi
# teacher and student are one architecture: a sweep over both would pair every width with every other
for net in ${NETS//,/ }; do
    sweep "$OUT/$net" experiment=ban_cifar100 "teacher=$net" "student=$net" ${DATA[@]+"${DATA[@]}"}
done
report
