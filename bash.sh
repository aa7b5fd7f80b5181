#!/usr/bin/env bash
# Training / evaluation commands of the original project (docs/training.md), runnable as they are once
# ./checkpoint/medsam_vit_b.pth and the datasets under ./data/ exist (see README.md, "Data").
# Run one line at a time, or the whole file: bash bash.sh
set -euo pipefail

# --- LIDC (128 px crops, four raters) -----------------------------------------------------------------------
python train.py -exp_name 'LIDC_SPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode SPA
python train.py -exp_name 'LIDC_AESPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA
python train.py -exp_name 'LIDC_SPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 24 -n_clusters 4 -n_components 16 -mode SPA

# --- MBH-Seg (after: python process_mbhseg.py --src data/MBHSeg --dst data) -----------------------------------
python train.py -exp_name 'MBHSeg_AESPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -mode AESPA

# --- Evaluate the published AESPA checkpoint (./checkpoint/checkpoint_aespa_lidc.pth) -------------------------
python val.py -sam_ckpt './checkpoint/medsam_vit_b.pth' -weights './checkpoint/checkpoint_aespa_lidc.pth' -image_size 128 -b 1 -dataset LIDC -data_path './data/LIDC' -mode AESPA

# --- Ablations of this codebase (one flag each against LIDC_AESPA) -------------------------------------------
python train.py -exp_name 'LIDC_AESPA_fcomb_reference' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -fcomb reference
python train.py -exp_name 'LIDC_AESPA_target_all' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -target_from all
python train.py -exp_name 'LIDC_AESPA_topk_clicks' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -click_strategy topk
python train.py -exp_name 'LIDC_AESPA_no_switch' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -switch_prob 0
python train.py -exp_name 'LIDC_AESPA_train_prompt' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -train_prompt
python train.py -exp_name 'LIDC_AESPA_nonempty' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA -valid_raters nonempty
