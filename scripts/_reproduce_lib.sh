# Shared by scripts/reproduce_<table>.sh: options, the smoke settings, the sweep and the report.
# Each script sets TABLE and USAGE, sources this file, calls parse_args "$@", then sweep ... and report.
set -euo pipefail

PYTHON="${PYTHON:-python}"
SMOKE=0
OUT=""
SEEDS="0,1,2"
TEACHER_SEED=0  # one teacher per pair for all student seeds, as the papers; "run": the run's seed
EXTRA=()
FAILED=0  # a sweep with failed jobs: the other sweeps and the report still run, the exit status is 1

usage_exit() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --smoke) SMOKE=1 ;;
            --out) OUT="$2"; shift ;;
            --seeds) SEEDS="$2"; shift ;;
            --teacher-seed) TEACHER_SEED="$2"; shift ;;
            -h|--help) usage_exit 0 ;;
            --) shift; EXTRA+=("$@"); break ;;
            -*) echo "$(basename "$0"): unknown option $1 (see --help)" >&2; exit 2 ;;
            *) EXTRA+=("$1") ;;
        esac
        shift
    done
    if [ "$SMOKE" = 1 ]; then
        SEEDS=0
        OUT="${OUT:-reproduce/${TABLE}-smoke}"
    else
        OUT="${OUT:-reproduce/${TABLE}}"
    fi
    mkdir -p "$OUT"
}

# The smoke settings: 1 epoch on a few dozen random images of the table's shape (CHANNELS SIZE CLASSES).
smoke_data() {
    echo "dataset=synthetic dataset.channels=$1 dataset.image_size=$2 dataset.num_classes=$3" \
         "dataset.train_size=16 dataset.test_size=16 train.epochs=1 teacher.train.epochs=1" \
         "train.batch_size=16 teacher.train.batch_size=16 train.milestones=[] teacher.train.milestones=[]"
}

# sweep DIR OVERRIDES...: one `kdrun -m` into DIR (rerunning skips finished runs, resumes the others).
sweep() {
    local dir="$1"; shift
    local pin=()
    [ "$TEACHER_SEED" != run ] && pin=("teacher.seed=$TEACHER_SEED")
    echo "+ kdrun -m $* seed=$SEEDS ${pin[*]-} ${EXTRA[*]-} hydra.sweep.dir=$dir"
    "$PYTHON" -m kdrun -m "$@" "seed=$SEEDS" ${pin[@]+"${pin[@]}"} progress=false ${EXTRA[@]+"${EXTRA[@]}"} "hydra.sweep.dir=$dir" \
        || FAILED=1
}

# alone_and_preset SMOKE_OVERRIDES...: the tables of one stage-wise method on CIFAR-10: the student
# alone (not under --smoke) and experiment=$TABLE, each one sweep; SMOKE_OVERRIDES are added to the
# smoke settings (e.g. the length of a stage whose recipe does not follow train.epochs).
alone_and_preset() {
    local data=()
    [ "$SMOKE" = 1 ] && read -r -a data <<< "$(smoke_data 3 8 10) $*"
    [ "$SMOKE" = 1 ] || sweep "$OUT/alone" "experiment=$TABLE" method=ce schedule=single ${data[@]+"${data[@]}"}
    sweep "$OUT/method" "experiment=$TABLE" ${data[@]+"${data[@]}"}
}

report() {
    echo "+ kdrun-report $OUT --paper $TABLE"
    "$PYTHON" -m kdrun.results.report "$OUT" --paper "$TABLE"
    return "$FAILED"
}
