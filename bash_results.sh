#!/usr/bin/env bash
# README "Results": SPA vs AESPA on the built-in synthetic data, small encoder (vit_t, 64 px), CPU, three seeds.
# Same budget for both modes: 10 epochs, one validation after the last. SPA draws 12 latent samples per image
# (the ablation's smallest value; 48 makes SPA ~2.5x slower on a CPU). Each trained model is also evaluated
# under the other mode's protocol (val.py -mode). About 70 minutes on 2 CPU cores.
# Runs are seeded and CPU results are deterministic: rerunning gives the committed assets/results/ table.
set -e
if [ -e logs_results ]; then echo "bash_results.sh: logs_results/ exists; move it away first" >&2; exit 1; fi
for seed in 0 1 2; do
    python train.py -mode AESPA -exp_name synthetic_AESPA_seed$seed -seed $seed -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
    python train.py -mode SPA -exp_name synthetic_SPA_seed$seed -seed $seed -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
done
for seed in 0 1 2; do
    python val.py -weights logs_results/synthetic_SPA_seed${seed}_*/Model/checkpoint_best.pth -mode AESPA -exp_name synthetic_SPA_eval_AESPA_seed$seed -seed $seed -num_samples 12 -device cpu -log_dir logs_results
    python val.py -weights logs_results/synthetic_AESPA_seed${seed}_*/Model/checkpoint_best.pth -mode SPA -exp_name synthetic_AESPA_eval_SPA_seed$seed -seed $seed -num_samples 12 -device cpu -log_dir logs_results
done
python tables.py logs_results -metrics Dice_follow,Gain_over_consensus,GED,NoC@0.90 -rounds 1,3,6 -out assets/results
