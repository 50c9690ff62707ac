#!/usr/bin/env bash
# Furlanello et al. 2018 (born-again networks), CIFAR-100, DenseNet-BC (experiment=ban_densenet_cifar100,
# Table 2): for DenseNet-112-33, -90-60, -80-80 and -80-120, a teacher, then one generation from it with the
# teacher term alone (BAN), with the label term too (BAN+L), CWTM and DKPP, and three born-again generations
# (two for 80-120, whose third ensemble member is the teacher) with the ensembles of the first 2 and 3, 3
# seeds; then kdrun-report --paper ban_densenet_cifar100.
#
# usage: scripts/reproduce_ban_densenet_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, DenseNet-112-33 narrowed to
#             depth 10 (so that it runs in seconds), every column
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/ban_densenet_cifar100, or reproduce/ban_densenet_cifar100-smoke)
# Needs CIFAR-100 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=ban_densenet_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
NETS="densenet112_33 densenet90_60 densenet80_80 densenet80_120"
DATA=()
if [ "$SMOKE" = 1 ]; then
    NETS=densenet112_33
    read -r -a DATA <<< "$(smoke_data 3 8 100) teacher.depth=10 student.depth=10"
fi
# teacher and student are one architecture: a sweep over both would pair every DenseNet with every other
for net in $NETS; do
    gens=(schedule.generations=3)
    [ "$net" = densenet80_120 ] && gens=(schedule.generations=2 schedule.ensemble_teacher=true)
    sweep "$OUT/$net/single" experiment=ban_densenet_cifar100 "teacher=$net" "student=$net" schedule=single \
        method.variant=null,cwtm,dkpp ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/$net/label" experiment=ban_densenet_cifar100 "teacher=$net" "student=$net" schedule=single \
        method.ce_weight=1 ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/$net/ban" experiment=ban_densenet_cifar100 "teacher=$net" "student=$net" "${gens[@]}" \
        ${DATA[@]+"${DATA[@]}"}
done
report
