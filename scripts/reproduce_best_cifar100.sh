#!/usr/bin/env bash
# The best published CIFAR-100 rows (experiment=best_cifar100): the student alone, KD, DKD and MLKD with
# and without logit standardisation (Sun et al., CVPR 2024), and ReviewKD (Chen et al., CVPR 2021), on the
# 7 same-architecture pairs, 3 seeds; each row with its authors' recipe: mdistiller's for ce, KD, DKD and
# their LS rows; ReviewKD's train.py (batch 128, lr 0.1, Nesterov); MLKD's current configs (lr 0.025);
# Sun et al.'s MLKD+LS configs (480 epochs, lr 0.025, 0.01 for vgg13->vgg8). Each teacher is trained once
# (mdistiller's recipe, its seed pinned, see --teacher-seed) and shared through the teacher cache. Then the
# report in the table's layout (rows methods, columns pairs) beside its numbers (kdrun-report --paper
# best_cifar100).
#
# usage: scripts/reproduce_best_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, every row on resnet56->resnet20
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/best_cifar100, or reproduce/best_cifar100-smoke)
#   OVERRIDE  more kdrun overrides, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu
# Needs CIFAR-100 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=best_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
PAIRS=resnet32x4-resnet8x4,vgg13-vgg8,wrn40_2-wrn40_1,wrn40_2-wrn16_2,resnet56-resnet20,resnet110-resnet32,resnet110-resnet20
REVIEWKD=(train.batch_size=128 train.lr=0.1 train.nesterov=true)
if [ "$SMOKE" = 1 ]; then
    read -r -a DATA <<< "$(smoke_data 3 8 100)"
    sweep "$OUT/mdistiller" experiment=best_cifar100 method=ce,kd,kd_ls,dkd,dkd_ls,mlkd,mlkd_ls \
        pair=resnet56-resnet20 "${DATA[@]}"
    sweep "$OUT/reviewkd" experiment=best_cifar100 method=reviewkd pair=resnet56-resnet20 "${DATA[@]}" \
        train.batch_size=16 train.lr=0.1 train.nesterov=true
else
    sweep "$OUT/mdistiller" experiment=best_cifar100 method=ce,kd,kd_ls,dkd,dkd_ls "pair=$PAIRS"
    sweep "$OUT/reviewkd" experiment=best_cifar100 method=reviewkd "pair=${PAIRS%,resnet110-resnet20}" "${REVIEWKD[@]}"
    sweep "$OUT/mlkd" experiment=best_cifar100 method=mlkd "pair=$PAIRS" train.lr=0.025
    sweep "$OUT/mlkd_ls" experiment=best_cifar100 method=mlkd_ls "pair=${PAIRS/vgg13-vgg8,/}" train.epochs=480 train.lr=0.025
    sweep "$OUT/mlkd_ls_vgg" experiment=best_cifar100 method=mlkd_ls pair=vgg13-vgg8 train.epochs=480 train.lr=0.01
fi
report
