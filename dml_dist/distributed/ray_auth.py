"""Ray's token authentication on the client side: the driver that joins a cluster (``dml-dist
train --address``) and the job client (``dml-dist submit``) send the token when one exists."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def enable_token_auth() -> None:
    """Put this process's Ray client in token mode when a token exists and ``RAY_AUTH_MODE`` is
    unset (a cluster started with a token refuses clients that send none). Ray caches the mode
    when it is imported, so the cache is refreshed when ``ray`` is already loaded."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and ("RAY_AUTH_TOKEN" in os.environ or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
