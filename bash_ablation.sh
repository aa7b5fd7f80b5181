#!/usr/bin/env bash
# The original project's SPA ablation: latent samples (-num_samples 12/24/48), candidate segmentations
# (-n_clusters 2/3/4) and mixture components (-n_components 4/8/16), on LIDC and MBH-Seg (binary).
#
# One factor at a time around the default (48 samples, 4 clusters, 16 components): 7 runs per dataset instead of
# the 27 of the full product. Each factor's curve is what the ablation reports; the full product would cost ~4x
# the GPU time for interactions the paper does not discuss (add lines in the same style to probe one).
# Every line names all three values, so the runs do not depend on the defaults in cfg.py, and the exp_name spells
# them out (samples / clusters / components). The default point appears once per dataset.
#
# Runs go to ./logs_ablation/ (kept apart from logs_new/ so that the tables below cover exactly this grid).
# Seeds: SEEDS="0 1 2" bash bash_ablation.sh repeats the grid per seed; tables.py averages runs that differ
# only in -seed (mean ± sample std). Needs ./checkpoint/medsam_vit_b.pth and ./data/ as for bash.sh.
set -euo pipefail

for seed in ${SEEDS:-0}; do
# --- LIDC (128 px) ------------------------------------------------------------------------------------------------
python train.py -exp_name 'LIDC_SPA_samples48_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 48 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples12_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 12 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples24_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 24 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples48_clusters2_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 48 -n_clusters 2 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples48_clusters3_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 48 -n_clusters 3 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples48_clusters4_components4' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 48 -n_clusters 4 -n_components 4 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'LIDC_SPA_samples48_clusters4_components8' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 48 -n_clusters 4 -n_components 8 -mode SPA -seed "$seed" -log_dir logs_ablation

# --- MBH-Seg binary (256 px; after: python process_mbhseg.py --src data/MBHSeg --dst data) ----------------------
python train.py -exp_name 'MBHSeg_SPA_samples48_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 48 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples12_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 12 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples24_clusters4_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 24 -n_clusters 4 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples48_clusters2_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 48 -n_clusters 2 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples48_clusters3_components16' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 48 -n_clusters 3 -n_components 16 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples48_clusters4_components4' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 48 -n_clusters 4 -n_components 4 -mode SPA -seed "$seed" -log_dir logs_ablation
python train.py -exp_name 'MBHSeg_SPA_samples48_clusters4_components8' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -num_samples 48 -n_clusters 4 -n_components 8 -mode SPA -seed "$seed" -log_dir logs_ablation
done

# --- Summary: one table per dataset (mean ± std over seeds; rounds 1, 3 and the last) -----------------------------
python tables.py logs_ablation/LIDC_SPA_* -out tables_out/ablation_LIDC
python tables.py logs_ablation/MBHSeg_SPA_* -out tables_out/ablation_MBHSeg
