"""Batch speech synthesis (same as ``mmgen batch-tts``); runs unchanged under torchrun / accelerate launch.

    python scripts/generate_speech.py --texts texts.txt --out runs/speech
    torchrun --standalone --nproc_per_node 2 scripts/generate_speech.py --texts texts.jsonl --out runs/s --cpu
    accelerate launch --multi_gpu --num_processes 8 scripts/generate_speech.py --texts texts.txt --out runs/big
"""

import sys

from mmgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["batch-tts", *sys.argv[1:]]))
