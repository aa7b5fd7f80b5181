#!/usr/bin/env bash
# README "Results": the default `python train.py` (LiteMedSAM, frozen encoder, 64 px, 12 epochs; best checkpoint on
# the validation split, test split once at the end) against the baselines of the same protocol, on the built-in
# synthetic data, with the spread users meet: 3 training seeds x 2 data seeds at the machine's default thread count,
# and the same command at one thread. SPA with its own defaults (on the from-scratch vit_t: its 48 latent samples
# through LiteMedSAM's decoder take about an hour per epoch on a CPU) at the default's time budget, 3 seeds.
#
#   bash bash_results.sh                    # the default's runs beside one single-threaded job (about 3 h, 2 cores)
#   PARALLEL=2 bash bash_results.sh         # ... beside two at a time
#
# The same thread count on the same machine gives the same files, bit for bit; another thread count rounds floats
# differently and ends elsewhere, as another seed would (README "Results" measures by how much).
set -e
OUT=${OUT:-logs_results}
PARALLEL=${PARALLEL:-1}
if [ -e "$OUT" ]; then echo "bash_results.sh: $OUT/ exists; move it away first" >&2; exit 1; fi

# Baselines (no training) and the data of both seeds, generated before any job runs beside another.
for d in 0 1; do
    for mode in click_editor consensus; do
        python val.py -mode $mode -data_seed $d -exp_name ${mode}_data_seed$d -log_dir $OUT/$mode
    done
done

# The default, as README's command runs it (the machine's thread count), 3 training seeds on 2 data seeds: one lane,
# beside the single-threaded lane below (a thread count gives the same numbers however busy the machine is).
(
    for d in 0 1; do
        for s in 0 1 2; do
            python train.py -seed $s -data_seed $d -exp_name default_seed${s}_data$d -log_dir $OUT/default >/dev/null \
                2>"$OUT/default_seed${s}_data$d.err"
        done
    done
) &
DEFAULTS=$!

# Single-threaded jobs (OMP_NUM_THREADS=1), PARALLEL at a time: folder/run|script and flags.
JOBS=$(mktemp)
for sd in "0 0" "1 1" "2 0"; do
    set -- $sd
    echo "default_1thread/seed$1_data$2|train.py -seed $1 -data_seed $2" >>"$JOBS"
    echo "blind/seed$1_data$2|train.py -target consensus -seed $1 -data_seed $2" >>"$JOBS"
    echo "old_default/seed$1_data$2|train.py -sam_ckpt none -epochs 20 -val_freq 5 -target_from last -seed $1 -data_seed $2" >>"$JOBS"
    echo "spa/seed$1_data$2|train.py -mode SPA -sam_ckpt none -epochs 2 -val_freq 1 -seed $1 -data_seed $2" >>"$JOBS"
done
for d in 0 1; do  # the pretrained model, untrained, clicked as the others are (no box)
    echo "zeroshot/lite_data$d|val.py -sam_ckpt lite_medsam -data_seed $d" >>"$JOBS"
done
tr '\n' '\0' <"$JOBS" | xargs -0 -P "$PARALLEL" -I{} bash -c '
    name=${1%%|*}; command=${1#*|}; dir="$2/${name%%/*}"; err="$dir/${name##*/}.err"; mkdir -p "$dir"
    OMP_NUM_THREADS=1 python $command -exp_name ${name//\//_} -log_dir "$dir" >/dev/null 2>"$err" ||
        { echo "bash_results.sh: $name failed, see $err" >&2; exit 255; }' _ {} "$OUT"
rm -f "$JOBS"
wait $DEFAULTS

# Evaluation variants of trained models: the editor's rule painted on the default's and the blind model's
# predictions (the blind model + painting is the non-oracle answer a user could deploy), SPA under AESPA's protocol.
for run in "$OUT"/default/default_seed*_data0_* "$OUT"/blind/blind_seed*; do
    name=$(basename "$run" | sed 's/_20[0-9_]*$//')
    python val.py -weights "$run"/Model/checkpoint_best.pth -paint_clicks 3 -exp_name ${name}_paint \
        -log_dir "$OUT"/$(basename "$(dirname "$run")")_paint >/dev/null
done
for run in "$OUT"/spa/spa_seed*; do
    python val.py -weights "$run"/Model/checkpoint_best.pth -mode AESPA \
        -exp_name "$(basename "$run" | sed 's/_20[0-9_]*$//')_aespa_protocol" -log_dir "$OUT"/spa_aespa_protocol >/dev/null
done

ROUNDS=1,2,3,4,5,6
R=assets/results
python tables.py "$OUT"/* -metrics Dice_follow,Dice_follow_nonempty,Follow_accuracy -rounds $ROUNDS -out $R
python tables.py "$OUT"/spa -metrics Dice_follow,Dice_selected,Sample_spread,Empty_click_map,NoI@0.80,NoI@0.90 \
    -rounds $ROUNDS -out $R/spa_own_protocol
for other in blind blind_paint click_editor consensus zeroshot default_1thread old_default; do
    for empty in all nonempty; do
        python tables.py -compare "$OUT"/default "$OUT"/$other -rounds $ROUNDS -empty $empty \
            -out $R/default_vs_${other}_$empty
    done
done
python tables.py -compare "$OUT"/default "$OUT"/spa_aespa_protocol -rounds 2,3,4,5,6 -out $R/default_vs_spa
python tables.py -gain "$OUT"/spa -rounds 1,6 -out $R/spa_gain
python tables.py -gain "$OUT"/default -rounds 1,6 -out $R/default_gain
