"""Whether the Hugging Face hub can be asked at all.

Without a name server for the hub, its clients retry for 25-40 s before failing; this check makes an
offline machine fail at once. With HF_HUB_OFFLINE=1 the clients read the local cache, so no check.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline_reason() -> str | None:
    """None if the hub may be asked (or the cache is to be used), else why it cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"{host} cannot be resolved: this machine is offline (HF_HUB_OFFLINE=1 reads a local cache)"
    return None
