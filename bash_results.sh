#!/usr/bin/env bash
# README "Results": the default `python train.py` (LiteMedSAM, frozen encoder, 64 px, 12 epochs; best checkpoint on
# the validation split, test split once at the end) against the baselines of the same protocol, on the built-in
# synthetic data. The default runs once at the machine's thread count (README's own command) and three times at one
# thread (training seeds 0, 1, 2 on data seeds 0, 1, 0): the thread count rounds floats differently, which moves a
# run as a seed does, so the one-thread runs measure the spread and the default-thread run must fall inside it.
# Beside them: the preference-blind model (2 runs), SPA with its own defaults on the from-scratch vit_t at the
# default's time budget (3 seeds; through LiteMedSAM's decoder its 48 latent samples take about an hour per epoch on
# a CPU), zero-shot LiteMedSAM and the two oracle baselines (data seeds 0 and 1).
#
#   bash bash_results.sh                    # 1.5-2 h on 2 cores: two single-threaded jobs at a time
#   FULL=1 bash bash_results.sh             # + the default at the machine's thread count for all 3 x 2 seeds (about
#                                           # 1 h more): README's main row, its paired tables against the oracles
#                                           # (readme_command_vs_*) and the thread comparison on three seeds
#   SPA_FROM=old/logs_results bash bash_results.sh   # SPA's runs (spa/, spa_aespa_protocol/) copied from an earlier
#                                           # output instead of trained again (30 min less); only valid while SPA's
#                                           # code path is unchanged since (bit-exact: same machine, same threads)
#   NO_BRANCH=dir bash bash_results.sh      # + the default against runs of the same seeds without the pixel branch
#                                           # (e.g. commit dc560dd's logs_results/default_1thread: its default)
#   MIRROR=dir bash bash_results.sh         # + the default against runs of the same seeds with four symmetries
#                                           # (-augment mirror, e.g. the logs_results of commit c58c849, whose
#                                           # default it was; paired on default/ when both have it)
#
# The same thread count on the same machine gives the same files, bit for bit.
set -e
OUT=${OUT:-logs_results}
PARALLEL=${PARALLEL:-2}
# (sweep.py reads this file again while its jobs fill $OUT, and says so with AESPA_SWEEP_CONTINUES)
if [ -e "$OUT" ] && [ -z "${AESPA_SWEEP_CONTINUES:-}" ]; then echo "bash_results.sh: $OUT/ exists; move it away first" >&2; exit 1; fi

# Baselines (no training) and the data of both seeds, generated before any job runs beside another.
for d in 0 1; do
    for mode in click_editor consensus; do
        python val.py -mode $mode -data_seed $d -exp_name ${mode}_data_seed$d -log_dir $OUT/$mode
    done
done

# The default as README's command runs it (the machine's thread count), alone on the machine.
SEEDS="0 0"
[ -z "${FULL:-}" ] || SEEDS="0 0|1 0|2 0|0 1|1 1|2 1"
IFS='|' read -ra PAIRS <<<"$SEEDS"
for sd in "${PAIRS[@]}"; do
    set -- $sd
    mkdir -p $OUT/default
    python train.py -seed $1 -data_seed $2 -exp_name default_seed$1_data$2 -log_dir $OUT/default >/dev/null \
        2>"$OUT/default/seed$1_data$2.err"
done

# Single-threaded jobs (OMP_NUM_THREADS=1), PARALLEL at a time: folder/run|script and flags.
JOBS=$(mktemp)
for sd in "0 0" "1 1" "2 0"; do
    set -- $sd
    echo "default_1thread/seed$1_data$2|train.py -seed $1 -data_seed $2" >>"$JOBS"
    [ -n "${SPA_FROM:-}" ] ||
        echo "spa/seed$1_data$2|train.py -mode SPA -sam_ckpt none -epochs 2 -val_freq 1 -seed $1 -data_seed $2" >>"$JOBS"
done
if [ -n "${SPA_FROM:-}" ]; then cp -r "$SPA_FROM"/spa "$SPA_FROM"/spa_aespa_protocol "$OUT"/; fi
for sd in "0 0" "1 1"; do
    set -- $sd
    echo "blind/seed$1_data$2|train.py -target consensus -seed $1 -data_seed $2" >>"$JOBS"
done
for d in 0 1; do  # the pretrained model, untrained, clicked as the others are (no box)
    echo "zeroshot/lite_data$d|val.py -sam_ckpt lite_medsam -data_seed $d" >>"$JOBS"
done
tr '\n' '\0' <"$JOBS" | xargs -0 -P "$PARALLEL" -I{} bash -c '
    name=${1%%|*}; command=${1#*|}; dir="$2/${name%%/*}"; err="$dir/${name##*/}.err"; mkdir -p "$dir"
    OMP_NUM_THREADS=1 python $command -exp_name ${name//\//_} -log_dir "$dir" >/dev/null 2>"$err" ||
        { echo "bash_results.sh: $name failed, see $err" >&2; exit 255; }' _ {} "$OUT"
rm -f "$JOBS"

# Evaluation variants of trained models: the editor's rule painted on the default's and the blind model's
# predictions (the blind model + painting is the non-oracle answer a user could deploy), SPA under AESPA's protocol.
for run in "$OUT"/default_1thread/default_1thread_seed* "$OUT"/blind/blind_seed*; do
    name=$(basename "$run" | sed 's/_20[0-9_]*$//; s/_seed/_paint_seed/')  # seeds last: tables.py groups by the rest
    OMP_NUM_THREADS=1 python val.py -weights "$run"/Model/checkpoint_best.pth -paint_clicks 3 -exp_name $name \
        -log_dir "$OUT"/$(basename "$(dirname "$run")")_paint >/dev/null
done
for run in $([ -n "${SPA_FROM:-}" ] || echo "$OUT"/spa/spa_seed*); do
    OMP_NUM_THREADS=1 python val.py -weights "$run"/Model/checkpoint_best.pth -mode AESPA \
        -exp_name "$(basename "$run" | sed 's/_20[0-9_]*$//; s/^spa_/spa_aespa_protocol_/')" -log_dir "$OUT"/spa_aespa_protocol >/dev/null
done

# Tables. The paired comparisons take the three single-threaded default runs as the default (A side).
ROUNDS=1,2,3,4,5,6
R=assets/results
A="$OUT"/default_1thread
# SPA's own protocol has no followed rater (no Follow_accuracy): its own table below
python tables.py $(ls -d "$OUT"/*/ | grep -v '/spa/$') -metrics Dice_follow,Dice_follow_nonempty,Follow_accuracy -rounds $ROUNDS -out $R
python tables.py "$OUT"/spa -metrics Dice_follow,Dice_selected,Selected_minus_follow,Sample_spread,Empty_click_map,NoI@0.80,NoI@0.90 \
    -rounds $ROUNDS -out $R/spa_own_protocol
for other in blind blind_paint default_1thread_paint click_editor consensus zeroshot; do
    for empty in all nonempty; do
        python tables.py -compare "$A" "$OUT"/$other -rounds $ROUNDS -empty $empty -out $R/default_vs_${other}_$empty
    done
done
# the README command at the machine's thread count against the same seeds at one thread (every seed pair run at both)
THREAD_SEEDS="0 0"
[ -z "${FULL:-}" ] || THREAD_SEEDS="0 0|1 1|2 0"
IFS='|' read -ra PAIRS <<<"$THREAD_SEEDS"
for sd in "${PAIRS[@]}"; do
    set -- $sd
    python tables.py -compare "$OUT"/default/default_seed$1_data$2_* "$A"/default_1thread_seed$1_data$2_* -rounds $ROUNDS \
        -out $R/threads_seed$1_data$2
done
if [ -n "${FULL:-}" ]; then  # README's command over all six seed pairs against the oracles (A side: $OUT/default)
    for other in click_editor consensus; do
        for empty in all nonempty; do
            python tables.py -compare "$OUT"/default "$OUT"/$other -rounds $ROUNDS -empty $empty \
                -out $R/readme_command_vs_${other}_$empty
        done
    done
fi
python tables.py -compare "$A" "$OUT"/spa_aespa_protocol -rounds 2,3,4,5,6 -out $R/default_vs_spa
python tables.py -gain "$OUT"/spa -rounds 1,6 -out $R/spa_gain
python tables.py -gain "$A" -rounds 1,6 -out $R/default_gain
if [ -n "${NO_BRANCH:-}" ]; then  # the pixel branch's effect, paired on the same seeds
    for empty in all nonempty; do
        python tables.py -compare "$A" "$NO_BRANCH" -rounds $ROUNDS -empty $empty -out $R/default_vs_no_branch_$empty
    done
fi
if [ -n "${MIRROR:-}" ]; then  # the augmentation's effect: all eight symmetries (the default) against four, paired
    for side in default_1thread $([ -n "${FULL:-}" ] && [ -d "$MIRROR"/default ] && echo default); do
        python tables.py -compare "$OUT"/$side "$MIRROR"/$side -rounds $ROUNDS -out $R/${side}_vs_mirror
    done
fi
