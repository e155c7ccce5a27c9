#!/bin/bash
# Recipes of the shipped priors (issue 4), on a 2-core CPU, 1 thread per run (both run at once).
# Usage: train_shipped_priors.sh galaxy-64|ct-64 [stage1|stage2] [extra options, e.g. --resume]
#   stage1: autoencoder (1500 steps) + a first denoiser (2200 steps), about 76 min;
#   stage2: the shipped denoiser, 4500 steps on the stage-1 autoencoder (frozen, with its unit
#           map and decoder_sigma: --vae-from), about 70 min. The shipped weights are stage 2's.
source /work/venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
DATA="--size 64 --n 4200 --val 200 --augment flips --data-seed 0"
RUN="--unet-channels 48,96 --unet-batch-size 32 --unet-lr 1e-3 --seed 0 --threads 1 --device cpu --checkpoint-every 250 --eval-samples 200 --sample-steps 50 --quiet"
case $1 in
  galaxy-64) KIND="--dataset galaxies"; STAGE1="--stretch asinh --latent-channels 4";;
  ct-64) KIND="--dataset phantoms"; STAGE1="--latent-channels 8";;
  *) echo "usage: $0 galaxy-64|ct-64 [stage1|stage2] [options]"; exit 2;;
esac
case ${2:-stage2} in
  stage1) ARGS="$STAGE1 --vae-channels 16,32,64 --vae-steps 1500 --unet-steps 2200 --batch-size 16"
          OUT=/work/train/$1;;
  stage2) ARGS="--vae-from /work/train/$1 --unet-steps 4500"
          OUT=/work/train2/$1;;
esac
mkdir -p "$(dirname "$OUT")"
/usr/bin/time -v dwgf-sci train-prior $KIND $DATA $ARGS $RUN --out $OUT "${@:3}" > $OUT.log 2>&1
