"""Batch image generation (same as ``mmgen batch``); runs unchanged under torchrun / accelerate launch.

    python scripts/generate_images.py prompts.txt --out runs/x
    torchrun --standalone --nproc_per_node 2 scripts/generate_images.py --classes 0,1,2 --per-class 8 --out runs/d
    accelerate launch --multi_gpu --num_processes 8 scripts/generate_images.py prompts.jsonl --out runs/y
"""

import sys

from mmgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
