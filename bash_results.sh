#!/usr/bin/env bash
# docs/results.md: every run its tables come from, then the tables (assets/results/) and the page itself.
#
#   bash bash_results.sh                 # everything, about 4 h on 2 cores (two single-threaded jobs at a time)
#   PARTS="synthetic sessions" bash bash_results.sh     # some parts only: synthetic sessions cases lidc
#
# synthetic  `python train.py` (LiteMedSAM frozen, 64 px, 12 epochs, no memory) for training seeds 0, 1, 2 on data
#            seeds 0 and 1, the same with the session memory (-memory style) for seeds 0, 1, 2 on data seed 0, the
#            preference-blind model (-target consensus, seeds 0/0 and 1/1) and the two oracles; one thread each;
#            every final test also runs sessions of 8
# sessions   the memory model's checkpoints (data seed 0) again under the session protocol: memory reset at every
#            image, the followed rater's own masks as the memory (an upper bound), a switch of rater at the 5th
#            image
# cases      whole cases: the synthetic NIfTI set, a model with memory trained on its slices, predict.py with and
#            without the case memory (3 seeds)
# lidc       LIDC-IDRI's readers (-dataset LIDC-readers, 3 middle slices per nodule, no augmentation, 1 epoch): the
#            default, the model with memory and the preference-blind model (3 seeds each), the blind model's paint
#            variant, the memory model with its memory reset, the oracles
#
# A job is one line of $JOBS: "<folder>/<name>|<script and flags>"; PARALLEL jobs at a time with one thread each
# (the same files on the same machine, bit for bit); a job whose run has finished (summary.json of a training,
# metrics.jsonl of an evaluation) is skipped, so the script picks up where a stopped one left. Then tables.py into
# assets/results/ and `python -m analysis.results_page`, which rewrites the generated tables of README.md and docs/.
set -e
OUT=${OUT:-logs_results}
PARALLEL=${PARALLEL:-2}
PARTS=${PARTS:-synthetic sessions cases lidc}
R=assets/results
has() { [[ " $PARTS " == *" $1 "* ]]; }
# (sweep.py reads this file again while its jobs fill $OUT, and says so with AESPA_SWEEP_CONTINUES)
if [ -e "$OUT/.done_$(echo $PARTS | tr ' ' _)" ] && [ -z "${AESPA_SWEEP_CONTINUES:-}" ]; then
    echo "bash_results.sh: $OUT/ holds these parts already; move it away first" >&2
    exit 1
fi
mkdir -p "$OUT"

finished() {  # run $1 (<folder>/<run name>) has ended: a training's summary.json or an evaluation's metrics.jsonl
    compgen -G "$1_20*/summary.json" >/dev/null || compgen -G "$1_val_20*/metrics.jsonl" >/dev/null
}
export -f finished
run_jobs() {  # the lines "<folder>/<run name>|<script and flags>" of file $1, PARALLEL at a time, one thread each
    tr '\n' '\0' <"$1" | xargs -0 -P "$PARALLEL" -I{} bash -c '
        name=${1%%|*}; command=${1#*|}; dir="$2/$(dirname "$name")"; err="$dir/$(basename "$name").err"
        ! finished "$2/$name" || exit 0
        mkdir -p "$dir"
        OMP_NUM_THREADS=1 python $command -exp_name "$(basename "$name")" -log_dir "$dir" >/dev/null 2>"$err" ||
            { echo "bash_results.sh: $name failed, see $err" >&2; exit 255; }' _ {} "$OUT"
}
evaluate() {  # val.py as run $1 (<folder>/<run name>) with flags $2..., unless it has finished
    finished "$OUT/$1" || python val.py "${@:2}" -exp_name "$(basename "$1")" -log_dir "$OUT/$(dirname "$1")" >/dev/null
}
best() { echo "$OUT"/$1_*/Model/checkpoint_best.pth; }  # the best checkpoint of run <folder>/<run name>
ROUNDS=1,2,3,4,5,6
JOBS=$(mktemp)

if has synthetic; then
    for d in 0 1; do  # the data of both seeds first, then the trainings beside each other
        evaluate consensus/data$d/consensus_data$d -mode consensus -data_seed $d -session_length 8
        evaluate click_editor/data$d/click_editor_data$d -mode click_editor -data_seed $d -session_length 8
        for s in 0 1 2; do
            [ $d = 1 ] || echo "memory/data$d/memory_seed${s}_data$d|train.py -memory style -seed $s -data_seed $d" >>"$JOBS"
            echo "no_memory/data$d/no_memory_seed${s}_data$d|train.py -memory none -session_length 8 -seed $s -data_seed $d" >>"$JOBS"
        done
        echo "blind/data$d/blind_seed${d}_data$d|train.py -memory none -target consensus -seed $d -data_seed $d" >>"$JOBS"
    done
    run_jobs "$JOBS" && : >"$JOBS"
fi

if has sessions; then
    for s in 0 1 2; do
        ckpt=$(best memory/data0/memory_seed${s}_data0)
        for memory in none oracle; do
            echo "sessions_$memory/sessions_${memory}_seed${s}_data0|val.py -weights $ckpt -session_memory $memory" >>"$JOBS"
        done
        echo "sessions_switch/sessions_switch_seed${s}_data0|val.py -weights $ckpt -session_switch 5" >>"$JOBS"
    done
    run_jobs "$JOBS" && : >"$JOBS"
fi

if has cases; then
    CASES=$OUT/cases
    python -m volumes.synthetic $CASES/raw >/dev/null
    python process_mbhseg.py --src $CASES/raw --dst $CASES/slices >/dev/null
    for s in 0 1 2; do
        echo "cases_models/cases_seed$s|train.py -sam_ckpt none -dataset MBHSeg-Binary -data_path $CASES/slices/MBHSeg-Binary -memory style -epochs 5 -seed $s" >>"$JOBS"
    done
    run_jobs "$JOBS" && : >"$JOBS"
    for s in 0 1 2; do
        for memory in model none oracle; do
            OMP_NUM_THREADS=1 python predict.py -weights "$(best cases_models/cases_seed$s)" -data_path $CASES/raw/test \
                -out $CASES/predict_${memory}_seed$s -session_memory $memory >/dev/null
        done
    done
fi

if has lidc; then
    LIDC="-dataset LIDC-readers -slices_per_nodule 3 -augment none -epochs 1 -noc_clicks 0"
    python -m pipeline.lidc_readers --dst data/LIDC-readers >/dev/null  # (built once; 2-3 minutes)
    ORACLE="-dataset LIDC-readers -slices_per_nodule 3 -noc_clicks 0 -session_length 8"
    evaluate lidc_consensus/lidc_consensus -mode consensus $ORACLE
    evaluate lidc_click_editor/lidc_click_editor -mode click_editor $ORACLE
    for s in 0 1 2; do
        echo "lidc_no_memory/lidc_no_memory_seed$s|train.py $LIDC -memory none -seed $s" >>"$JOBS"
        echo "lidc_memory/lidc_memory_seed$s|train.py $LIDC -memory style -seed $s" >>"$JOBS"
        echo "lidc_blind/lidc_blind_seed$s|train.py $LIDC -memory none -target consensus -seed $s" >>"$JOBS"
    done
    run_jobs "$JOBS" && : >"$JOBS"
    for s in 0 1 2; do  # the editor's disks painted on the blind model: the deployable non-oracle answer
        echo "lidc_blind_paint/lidc_blind_paint_seed$s|val.py -weights $(best lidc_blind/lidc_blind_seed$s) -paint_clicks 3 -noc_clicks 0" >>"$JOBS"
        echo "lidc_sessions_none/lidc_sessions_none_seed$s|val.py -weights $(best lidc_memory/lidc_memory_seed$s) -session_memory none" >>"$JOBS"
    done
    run_jobs "$JOBS" && : >"$JOBS"
fi
rm -f "$JOBS"
touch "$OUT/.done_$(echo $PARTS | tr ' ' _)"

# --- tables ---------------------------------------------------------------------------------------------------
python -m analysis.results_tables "$OUT" "$R" $PARTS
python -m analysis.results_page
