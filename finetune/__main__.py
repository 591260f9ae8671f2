"""`python -m finetune --data data/prepared --checkpoint-dir checkpoints/tiiuae/falcon-7b --out-dir out/twin`

See `python -m finetune -h` for every flag; defaults live in `finetune/args.py`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from common.cli import run
from finetune.args import parse_args
from finetune.errors import UserError, write_errors


def main(argv: Sequence[str] | None = None) -> int:
    # ragged micro-batches fragment the CUDA caching allocator less with expandable segments
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning.fabric", "lightning_fabric", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run(
        lambda: train(argv),
        errors=(UserError,),
        interrupted="interrupted: continue later with the same command plus --resume",
    )


def train(argv: Sequence[str] | None) -> None:
    args = parse_args(argv)
    from finetune.train import setup  # heavy imports only after the flags are valid

    with write_errors("--out-dir"):
        summary = setup(args)
    if summary is not None:
        print(summary.line())


if __name__ == "__main__":
    sys.exit(main())
