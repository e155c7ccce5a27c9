#!/bin/bash
# Recipes of the shipped priors (issue 4), on a 2-core CPU, 1 thread per run (both run at once).
# Usage: train_shipped_priors.sh galaxy-64|ct-64 [stage1|stage2] [extra options, e.g. --resume]
#        train_shipped_priors.sh field-64|ct-patch-64 [extra options]   (one run, see below)
#   stage1: autoencoder (1500 steps) + a first denoiser (2200 steps), about 76 min;
#   stage2: the shipped denoiser, 4500 steps on the stage-1 autoencoder (frozen, with its unit
#           map and decoder_sigma: --vae-from), about 70 min. The shipped weights are stage 2's.
source "${VENV:-/work/venv}/bin/activate"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
DATA="--size 64 --n 4200 --val 200 --augment flips --data-seed 0"
RUN="--unet-channels 48,96 --unet-batch-size 32 --unet-lr 1e-3 --seed 0 --threads 1 --device cpu --checkpoint-every 250 --eval-samples 200 --sample-steps 50 --quiet"
case $1 in
  galaxy-64) KIND="--dataset galaxies"; STAGE1="--stretch asinh --latent-channels 4";;
  ct-64) KIND="--dataset phantoms"; STAGE1="--latent-channels 8";;
  field-64|ct-patch-64)
    # patch priors (issue 22): one run of 1500 autoencoder and 4500 denoiser steps on 6 random
    # 64 px crops of each of 760 training images of 256 px (40 more for validation); 2026-12-07
    # on 2 cores, both at once: about 60 min each
    case $1 in
      field-64) KIND="--dataset fields --stretch asinh --latent-channels 4";;
      ct-patch-64) KIND="--dataset phantoms --latent-channels 8";;
    esac
    mkdir -p /work/train
    /usr/bin/time -v dwgf-sci train-prior $KIND --size 256 --n 800 --val 40 --patch-size 64 \
      --crops-per-image 6 --augment flips --data-seed 0 --vae-channels 16,32,64 --vae-steps 1500 \
      --unet-steps 4500 --batch-size 16 $RUN --out /work/train/$1 "${@:2}" > /work/train/$1.log 2>&1
    exit $?;;
  *) echo "usage: $0 galaxy-64|ct-64 [stage1|stage2] [options] | field-64|ct-patch-64 [options]"
     exit 2;;
esac
case ${2:-stage2} in
  stage1) ARGS="$STAGE1 --vae-channels 16,32,64 --vae-steps 1500 --unet-steps 2200 --batch-size 16"
          OUT=/work/train/$1;;
  stage2) ARGS="--vae-from /work/train/$1 --unet-steps 4500"
          OUT=/work/train2/$1;;
esac
mkdir -p "$(dirname "$OUT")"
/usr/bin/time -v dwgf-sci train-prior $KIND $DATA $ARGS $RUN --out $OUT "${@:3}" > $OUT.log 2>&1
