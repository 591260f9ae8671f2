"""`python -m serve --checkpoint-dir CKPT --lora-path out/twin/lit_model_lora_finetuned.pth [--port N]`.

Every flag is also an environment variable `TWIN_<FLAG>` (see `python -m serve --help`); the API key
only as `TWIN_API_KEY`, never a flag (flags show up in `ps`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import CliApp

from serve.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = CliApp.run(Settings, cli_args=list(sys.argv[1:] if argv is None else argv))
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(
                f"error: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}",
                file=sys.stderr,
            )
        return 2
    # the web stack, torch and litgpt load only now: --help and settings mistakes answer at once
    import torch
    import uvicorn

    from common.device import resolve_device
    from serve.app import create_app
    from serve.model import ModelLoadError
    from serve.service import build_service

    try:
        service = build_service(settings)  # fails fast on a wrong path, before binding the port
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if resolve_device(settings.device).type == "cpu":
        # one core stays with the HTTP side: more torch threads than free cores make every op wait
        # for a descheduled thread (on a 2-core box that is ~10x slower, see docs/BENCHMARKS.md)
        torch.set_num_threads(settings.cpu_threads or max(1, (os.cpu_count() or 1) - 1))
    app = create_app(settings, service)
    service.engine.start()
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    finally:
        service.engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
