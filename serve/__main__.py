"""`python -m serve --checkpoint-dir CKPT --lora-path out/twin/lit_model_lora_finetuned.pth [--port N]`.

Every flag is also an environment variable `TWIN_<FLAG>` (see `python -m serve --help`: each flag's
default is what the environment and `.env` give it); the API key only as `TWIN_API_KEY`, never a flag
(flags show up in `ps`). The flags are generated from `serve.settings.Settings` by common/cli.py.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from common.cli import parse_settings, run
from serve.settings import Settings

PROG = "python -m serve"
EPILOG = (
    "The API key is read only from TWIN_API_KEY and the admin key only from TWIN_ADMIN_KEY (env or .env): "
    "a flag would show up in `ps`."
)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # ModelLoadError is a ValueError, as are settings the device or model cannot honour
    return run(lambda: serve(parse_settings(Settings, argv, prog=PROG, epilog=EPILOG)), errors=(ValueError,))


def serve(settings: Settings) -> None:
    """Load the model, then answer HTTP on `settings.host:port` until stopped."""
    # the web stack, torch and litgpt load only now: --help and settings mistakes answer at once
    import torch
    import uvicorn

    from common.device import resolve_device
    from serve.app import create_app, uvicorn_options
    from serve.service import build_service

    service = build_service(settings)  # fails fast on a wrong path, before binding the port
    if resolve_device(settings.device).type == "cpu":
        # one core stays with the HTTP side: more torch threads than free cores make every op wait
        # for a descheduled thread (on a 2-core box that is ~10x slower, see docs/BENCHMARKS.md)
        torch.set_num_threads(settings.cpu_threads or max(1, (os.cpu_count() or 1) - 1))
    app = create_app(settings, service)
    service.engine.start()
    try:
        uvicorn.run(app, **uvicorn_options(settings))
    finally:
        service.engine.stop()


if __name__ == "__main__":
    sys.exit(main())
