"""`python -m ui [streamlit options]` is `streamlit run ui/app.py` with private defaults.

Streamlit's usage statistics are switched off (the page is about your private chats) and the toolbar
shows no "Deploy" button; options given on the command line win over these defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit.web import cli as streamlit_cli

DEFAULTS = {"browser.gatherUsageStats": "false", "client.toolbarMode": "minimal"}


def main() -> None:
    options = sys.argv[1:]
    given = {arg.removeprefix("--").split("=", 1)[0] for arg in options if arg.startswith("--")}
    defaults = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in given]
    sys.argv = ["streamlit", "run", str(Path(__file__).with_name("app.py")), *defaults, *options]
    sys.exit(streamlit_cli.main())


if __name__ == "__main__":
    main()
