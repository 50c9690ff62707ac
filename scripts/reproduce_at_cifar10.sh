#!/usr/bin/env bash
# Zagoruyko & Komodakis 2017 (AT), CIFAR-10 (experiment=at_cifar10): the student alone, AT, KD and AT+KD
# on the WRN pairs wrn16_2->wrn16_1, wrn40_1->wrn16_1, wrn40_2->wrn16_2, 3 seeds, then the report
# (kdrun-report --paper at_cifar10; the paper's numbers as quoted by secondary sources: kdrun/papers/at_cifar10.json).
# Three sweeps: ce and kd; at (AT alone, method.alpha=0); at with method.alpha=0.9 (AT+KD).
#
# usage: scripts/reproduce_at_cifar10.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images, one seed, the pair wrn16_2->wrn16_1 only,
#             AT and AT+KD only
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/at_cifar10, or reproduce/at_cifar10-smoke)
# Needs CIFAR-10 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=at_cifar10
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
TEACHERS=wrn16_2,wrn40_1,wrn40_2
DATA=()
if [ "$SMOKE" = 1 ]; then
    read -r -a DATA <<< "$(smoke_data 3 8 10)"
    PAIRS=(teacher=wrn16_2 student=wrn16_1)
    sweep "$OUT/at" experiment=at_cifar10 method=at method.alpha=0.0,0.9 method.ce_weight=null "${PAIRS[@]}" "${DATA[@]}"
else
    # student wrn16_1 for the first two teachers, wrn16_2 for the third: two sweeps each
    for spec in "teacher=wrn16_2,wrn40_1 student=wrn16_1" "teacher=wrn40_2 student=wrn16_2"; do
        read -r -a PAIRS <<< "$spec"
        sweep "$OUT/baselines-${PAIRS[1]#student=}" experiment=at_cifar10 method=ce,kd "${PAIRS[@]}"
        sweep "$OUT/at-${PAIRS[1]#student=}" experiment=at_cifar10 method=at method.alpha=0.0,0.9 method.ce_weight=null "${PAIRS[@]}"
    done
fi
report
