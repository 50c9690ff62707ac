#!/usr/bin/env bash
# Mirzadeh et al. 2020 (TAKD) (experiment=takd_cifar): for each chain, the student alone, KD straight from
# the teacher, and TAKD through the assistant, 3 seeds; the chains of the paper's Table 1:
# resnet110->resnet20->resnet8 and plain10->plain4->plain2, each on CIFAR-100 and CIFAR-10 (plain CNNs
# train at the constant lr 0.01 of the authors' code: at the paper's 0.1 plain2 does not learn, see
# conf/experiment/takd_cifar.yaml). Then kdrun-report --paper takd_cifar.
# Three sweeps per chain (ce; kd; schedule=takd), since a chain's assistants go with its teacher.
#
# usage: scripts/reproduce_takd_cifar.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, the CIFAR-100 ResNet
#             chain only, without the student-alone runs
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/takd_cifar, or reproduce/takd_cifar-smoke)
# Needs CIFAR-10 and CIFAR-100 under dataset.root. Rerunning skips the finished runs.
TABLE=takd_cifar
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
CHAINS=("cifar100 resnet110 [resnet20] resnet8" "cifar10 resnet110 [resnet20] resnet8"
        "cifar10 plain10 [plain4] plain2" "cifar100 plain10 [plain4] plain2")
PLAIN_RECIPE=(train.lr=0.01 train.milestones=[])
[ "$SMOKE" = 1 ] && CHAINS=("${CHAINS[0]}")
for chain in "${CHAINS[@]}"; do
    read -r dataset teacher assistants student <<< "$chain"
    DATA=("dataset=$dataset")
    [ "$SMOKE" = 1 ] && read -r -a DATA <<< "$(smoke_data 3 8 100)"
    name="$dataset-$teacher-$student"
    ARGS=(experiment=takd_cifar "teacher=$teacher" "student=$student")
    [[ "$teacher" == plain* ]] && ARGS+=("${PLAIN_RECIPE[@]}")
    ARGS+=("${DATA[@]}")
    [ "$SMOKE" = 1 ] || sweep "$OUT/$name/alone" "${ARGS[@]}" method=ce schedule=single
    sweep "$OUT/$name/kd" "${ARGS[@]}" method=kd schedule=single
    sweep "$OUT/$name/takd" "${ARGS[@]}" method=kd schedule=takd "schedule.assistants=$assistants"
done
report
