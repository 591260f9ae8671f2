"""`python -m ui [--host ADDRESS] [streamlit options]` is `streamlit run ui/app.py` with private defaults.

The page listens on 127.0.0.1 only and Streamlit accepts only local Host names (DNS rebinding) and
same-site Origins; `--host 0.0.0.0` (or TWIN_UI_HOST) shares it with the network, with a warning: whoever
opens it chats as you. Streamlit's usage statistics are off (the page is about your private chats) and the
toolbar shows no "Deploy" button; options given on the command line win over these defaults.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from streamlit.web import cli as streamlit_cli

from ui.access import DEFAULT_HOST, HOST_ENV, LOCAL_NAMES, is_loopback, share_warning

DEFAULTS = {
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    "server.enableXsrfProtection": "true",
    "server.enableCORS": "true",
}


def split_host(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """`--host X`, `--host=X` or Streamlit's own `--server.address X`, and the other arguments."""
    host, rest = None, []
    it = iter(args)
    for arg in it:
        name, equals, value = arg.partition("=")
        if name in ("--host", "--server.address"):
            host = value if equals else next(it, "")
        else:
            rest.append(arg)
    return host, rest


def streamlit_argv(args: Sequence[str], environ: dict[str, str]) -> tuple[list[str], str]:
    """The `streamlit run` command line for `python -m ui ARGS`, and the address it binds."""
    host, options = split_host(args)
    host = (host or environ.get(HOST_ENV, "")).strip() or DEFAULT_HOST
    given = {arg.removeprefix("--").split("=", 1)[0] for arg in options if arg.startswith("--")}
    defaults = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in given]
    if is_loopback(host) and "server.allowedHosts" not in given:
        defaults += [f"--server.allowedHosts={name}" for name in LOCAL_NAMES]
    app = str(Path(__file__).with_name("app.py"))
    return ["streamlit", "run", app, f"--server.address={host}", *defaults, *options], host


def main() -> None:
    argv, host = streamlit_argv(sys.argv[1:], dict(os.environ))
    os.environ[HOST_ENV] = host  # the page reads it: shared on purpose, or local only
    if not is_loopback(host):
        print(share_warning(host), file=sys.stderr)
    sys.argv = argv
    sys.exit(streamlit_cli.main())


if __name__ == "__main__":
    main()
