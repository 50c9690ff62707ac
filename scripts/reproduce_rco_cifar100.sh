#!/usr/bin/env bash
# Jin et al. 2019 (RCO), CIFAR-100 (experiment=rco_cifar100): teacher ResNet-50, student MobileNetV2; the
# student alone and KD (one sweep), RCO with anchors every 60 teacher epochs (the equal epoch interval
# strategy) and RCO with the greedy search among the teacher's epochs every 20 (one sweep each), 3 seeds:
# 12 runs; the teacher is trained once (its seed pinned, see --teacher-seed), keeping every 20th epoch, and
# shared through the teacher cache. Then the report beside the paper's numbers (kdrun-report --paper
# rco_cifar100; the paper's table was not at hand: its cells say n/a, see docs/reproducing-papers.md).
#
# usage: scripts/reproduce_rco_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch per stage on 16 random 3x8x8 images of 100 classes (a 3-epoch teacher), one seed
#   --teacher-seed  the teacher's seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/rco_cifar100, or reproduce/rco_cifar100-smoke)
#   OVERRIDE  more kdrun overrides, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu
# Needs CIFAR-100 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=rco_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
DATA=()
EQUAL=()
GREEDY=(schedule.interval=20)
if [ "$SMOKE" = 1 ]; then
    SMOKE_DATA="$(smoke_data 3 8 100)"
    # a teacher of 3 epochs, so the route has anchors (epochs 1 and 2) to choose from
    read -r -a DATA <<< "${SMOKE_DATA/teacher.train.epochs=1/teacher.train.epochs=3} teacher.train.keep_every=1"
    EQUAL=(schedule.interval=1)
    GREEDY=(schedule.interval=1)
fi
sweep "$OUT/alone_kd" experiment=rco_cifar100 method=ce,kd schedule=single ${DATA[@]+"${DATA[@]}"}
sweep "$OUT/rco" experiment=rco_cifar100 method=kd schedule=rco ${EQUAL[@]+"${EQUAL[@]}"} ${DATA[@]+"${DATA[@]}"}
sweep "$OUT/rco_greedy" experiment=rco_cifar100 method=kd schedule=rco schedule.strategy=greedy "${GREEDY[@]}" \
    ${DATA[@]+"${DATA[@]}"}
report
