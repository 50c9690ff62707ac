#!/usr/bin/env bash
# Zagoruyko & Komodakis 2017 (AT), ImageNet (experiment=at_imagenet): ResNet-18 alone and with attention
# transfer from torchvision's ResNet-34 (teacher.pretrained=torchvision), 100 epochs each, 3 seeds: one
# `kdrun -m` sweep of 2 methods, 6 runs. Then the report beside the paper's numbers (kdrun-report --paper
# at_imagenet). Each run wants several GPUs: give the launcher, e.g. one 8-GPU SLURM job per run:
#   scripts/reproduce_at_imagenet.sh hydra/launcher=slurm hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8
#
# usage: scripts/reproduce_at_imagenet.sh [--smoke] [--out DIR] [--seeds 0,1,2] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x32x32 images of 1000 classes, one seed, a teacher trained for 1 epoch
#   --out     the sweep directory (default reproduce/at_imagenet, or reproduce/at_imagenet-smoke)
#   OVERRIDE  more kdrun overrides, e.g. the launcher's (above)
# Needs ImageNet's train/ and val/ class folders under dataset.root (docs/datasets.md). Rerunning skips the
# finished runs.
TABLE=at_imagenet
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
if [ "$SMOKE" = 1 ]; then
    read -r -a DATA <<< "$(smoke_data 3 32 1000) teacher.pretrained=null"
    sweep "$OUT/table" experiment=at_imagenet method=ce,at "${DATA[@]}"
else
    sweep "$OUT/table" experiment=at_imagenet method=ce,at
fi
report
