#!/usr/bin/env bash
# Tian et al. 2020 (CRD), CIFAR-100 (experiment=crd_cifar100): the student alone and 14 methods (ce, kd,
# fitnet, at, sp, cc, vid, rkd, pkt, ab, ft, fsp, nst, crd, dkd) on the 7 same-architecture and 6
# cross-architecture pairs of the paper's Tables 1 and 2, 3 seeds: a `kdrun -m` sweep of 14 methods x 13 pairs
# and one of fsp on 6 pairs, 564 runs in all; each
# teacher is trained once (its seed pinned, see --teacher-seed) and shared through the teacher cache. Then the report in the paper's layout
# (rows methods, columns pairs) beside its numbers (kdrun-report --paper crd_cifar100).
# fsp runs in a second sweep, on the pairs of equal stage widths only (FSP compares matrices of equal
# shapes; the paper has no other FSP number).
#
# usage: scripts/reproduce_crd_cifar100.sh [--smoke] [--out DIR] [--seeds 0,1,2] [--teacher-seed 0|run] [OVERRIDE...]
#   --smoke   1 epoch on 16 random 3x8x8 images of 100 classes, one seed, and a documented subset of the
#             table to stay within a CI budget: every method on resnet56->resnet20 (crd with 8
#             negatives)
#   --teacher-seed  the teachers' seed, shared by all student seeds (default 0); run: each seed its own
#   --out     the sweep directory (default reproduce/crd_cifar100, or reproduce/crd_cifar100-smoke)
#   OVERRIDE  more kdrun overrides, e.g. hydra/launcher=slurm hydra.launcher.partition=gpu
# Needs CIFAR-100 under dataset.root (or dataset.download=true). Rerunning skips the finished runs.
TABLE=crd_cifar100
source "$(dirname "$0")/_reproduce_lib.sh"
parse_args "$@"
METHODS=ce,kd,fitnet,at,sp,cc,vid,rkd,pkt,ab,ft,fsp,nst,crd,dkd
SAME=wrn40_2-wrn16_2,wrn40_2-wrn40_1,resnet56-resnet20,resnet110-resnet20,resnet110-resnet32,resnet32x4-resnet8x4,vgg13-vgg8
CROSS=vgg13-mobilenetv2,resnet50-mobilenetv2,resnet50-vgg8,resnet32x4-shufflenetv1,resnet32x4-shufflenetv2,wrn40_2-shufflenetv1
if [ "$SMOKE" = 1 ]; then
    read -r -a DATA <<< "$(smoke_data 3 8 100) schedule.init.epochs=1"  # ab, ft, fsp: their init stage too
    sweep "$OUT/methods" experiment=crd_cifar100 "method=${METHODS%,crd,dkd},dkd" pair=resnet56-resnet20 "${DATA[@]}"
    sweep "$OUT/crd" experiment=crd_cifar100 method=crd method.nce_k=8 pair=resnet56-resnet20 "${DATA[@]}"
else
    sweep "$OUT/main" experiment=crd_cifar100 "method=${METHODS/,fsp/}" "pair=$SAME,$CROSS"
    sweep "$OUT/fsp" experiment=crd_cifar100 method=fsp "pair=${SAME/,wrn40_2-wrn40_1/}"
fi
report
