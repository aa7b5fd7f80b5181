#!/usr/bin/env bash
# README "Results": SPA vs AESPA on the built-in synthetic data, small encoder (vit_t, 64 px), CPU, three seeds.
# Same budget for both modes: 10 epochs, one validation after the last. SPA draws 12 latent samples per image
# (the ablation's smallest value; 48 makes SPA ~2.5x slower on a CPU). About 70 minutes on 2 CPU cores.
# Runs are seeded and CPU results are deterministic: rerunning gives the committed assets/results/ table.
set -e
python train.py -mode AESPA -exp_name synthetic_AESPA_seed0 -seed 0 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python train.py -mode SPA -exp_name synthetic_SPA_seed0 -seed 0 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python train.py -mode AESPA -exp_name synthetic_AESPA_seed1 -seed 1 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python train.py -mode SPA -exp_name synthetic_SPA_seed1 -seed 1 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python train.py -mode AESPA -exp_name synthetic_AESPA_seed2 -seed 2 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python train.py -mode SPA -exp_name synthetic_SPA_seed2 -seed 2 -epochs 10 -val_freq 10 -num_samples 12 -device cpu -log_dir logs_results
python tables.py logs_results -rounds 1,3,6 -out assets/results
