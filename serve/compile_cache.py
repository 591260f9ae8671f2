"""Compile caches that outlive the process: the decode step's Inductor artifacts kept in one folder.

The first start of the server on a machine compiles the decode step (Inductor's FX graph cache, AOT
autograd's cache, the Triton kernels and their autotuned launch configs, dynamo's recorded dynamic
shapes all land under TORCHINDUCTOR_CACHE_DIR); a later process pointed at the same folder loads them
instead of compiling. By default the folder sits beside the checkpoint (`serve.settings`), owner-only,
not in /tmp, so a reboot does not throw it away. Imports only torch and `common`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common.files import make_private_dir

log = logging.getLogger(__name__)


@dataclass
class CompileCache:
    """Where this process's compile artifacts go, and whether the folder held some before it started."""

    dir: str | None
    """The cache folder; None: Inductor's default (the folder could not be made, or none was asked)."""
    warm: bool
    """The folder held artifacts of an earlier start before this process compiled anything."""


def use_compile_cache(path: str | os.PathLike[str] | None) -> CompileCache:
    """Send Inductor's and Triton's on-disk caches to `path` (created 0700), with the local FX graph,
    AOT autograd and autotune caches on. Process-wide (environment variables): call it before the first
    compile. A folder that cannot be made is logged and left to Inductor's default."""
    if path is None:
        return CompileCache(None, False)
    folder = Path(path).expanduser().resolve()
    try:
        warm = folder.is_dir() and any(folder.iterdir())
        make_private_dir(folder)
    except OSError as e:
        log.warning("compile cache %s unusable (%s): compiling with Inductor's default cache", folder, e)
        return CompileCache(None, False)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    torch._inductor.config.fx_graph_cache = True
    torch._inductor.config.autotune_local_cache = True
    torch._functorch.config.enable_autograd_cache = True
    from torch._inductor.utils import clear_caches

    clear_caches()  # in-memory lookups made under another folder
    log.info("compile cache %s: %s", "warm" if warm else "cold (the first start compiles)", folder)
    return CompileCache(str(folder), warm)


def cache_counters() -> dict[str, int]:
    """This process's hits and misses of Inductor's FX graph cache and AOT autograd's cache so far."""
    from torch._dynamo.utils import counters

    return {
        "fx_graph_hits": counters["inductor"].get("fxgraph_cache_hit", 0),
        "fx_graph_misses": counters["inductor"].get("fxgraph_cache_miss", 0),
        "aot_autograd_hits": counters["aot_autograd"].get("autograd_cache_hit", 0),
        "aot_autograd_misses": counters["aot_autograd"].get("autograd_cache_miss", 0),
    }
