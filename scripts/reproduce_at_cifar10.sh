#!/usr/bin/env bash
# Zagoruyko & Komodakis 2017 (AT), CIFAR-10 (experiment=at_cifar10): the student alone, AT, F-ActT, KD and
# AT+KD on nin_wide->nin_thin and the WRN pairs wrn16_2->wrn16_1, wrn40_1->wrn16_1, wrn40_2->wrn16_2, 3 seeds,
# then the report (kdrun-report --paper at_cifar10: kdrun/papers/at_cifar10.json).
# Three sweeps a pair group: ce; at and fullact (AT and F-ActT alone, method.alpha=0); kd and at with the KD
# weight of the authors' code (method.alpha=0.18 method.ce_weight=0.1: KD and AT+KD; see the preset).
#
# usage: scripts/reproduce_at_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images, one seed, the pair wrn16_2->wrn16_1 only
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/at_cifar10, or reproduce/at_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=at_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
KD_WEIGHTS=(method.alpha=0.18 method.ce_weight=0.1)  # the authors' KD: alpha 0.9, KL averaged over classes
# student wrn16_1 for the first two teachers, wrn16_2 for the third: one set of sweeps each
SPECS=("teacher=nin_wide student=nin_thin" "teacher=wrn16_2,wrn40_1 student=wrn16_1" "teacher=wrn40_2 student=wrn16_2")
DATA=()
if [ "$SMOKE" = 1 ]; then
    SPECS=("teacher=wrn16_2 student=wrn16_1")
    read -r -a DATA <<< "$(smoke_data 3 8 10)"
fi
for spec in "${SPECS[@]}"; do
    read -r -a PAIRS <<< "$spec"
    name="${PAIRS[1]#student=}"
    sweep "$OUT/alone-$name" experiment=at_cifar10 method=ce "${PAIRS[@]}" ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/at-$name" experiment=at_cifar10 method=at,fullact method.alpha=0.0 method.ce_weight=null "${PAIRS[@]}" \
        ${DATA[@]+"${DATA[@]}"}
    sweep "$OUT/kd-$name" experiment=at_cifar10 method=kd,at "${KD_WEIGHTS[@]}" "${PAIRS[@]}" ${DATA[@]+"${DATA[@]}"}
done
report
