#!/bin/bash
# Recipes of the shipped priors (issue 4). Usage: run.sh galaxy-64|ct-64
source /work/venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
COMMON="--size 64 --n 4200 --val 200 --augment flips --vae-channels 16,32,64 --unet-channels 48,96 --vae-steps 1500 --unet-steps 2200 --batch-size 16 --unet-batch-size 32 --unet-lr 1e-3 --seed 0 --data-seed 0 --threads 1 --device cpu --checkpoint-every 250 --eval-samples 200 --sample-steps 50 --quiet"
case $1 in
  galaxy-64) ARGS="--dataset galaxies --stretch asinh --latent-channels 4";;
  ct-64) ARGS="--dataset phantoms --latent-channels 8";;
esac
/usr/bin/time -v dwgf-sci train-prior $ARGS $COMMON --out /work/train/$1 $2 > /work/train/log-$1.txt 2>&1
