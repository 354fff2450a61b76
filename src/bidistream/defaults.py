"""Defaults every command shares, so `run`, `gateway`, `env`, `invoke` and `endpoints`
find the same data dir and port without flags."""

from __future__ import annotations

import os
from pathlib import Path

# Where the store, the local CA and instance logs live; $BIDISTREAM_DATA_DIR overrides.
DEFAULT_DATA_DIR = Path(os.environ.get("BIDISTREAM_DATA_DIR", "~/.bidistream")).expanduser()
# SageMaker's runtime endpoint listens on 8443; the container contract uses 8080.
GATEWAY_PORT = 8443
MODEL_SERVER_PORT = 8080

# Placeholder credentials a local client signs with when the gateway checks none; one pair so the
# `run` banner, `bidistream env` and the docs never disagree.
PLACEHOLDER_ACCESS_KEY_ID = "bidistream"
PLACEHOLDER_SECRET_ACCESS_KEY = "bidistream-local-secret"
# The region local clients sign for unless told otherwise.
DEFAULT_REGION = "us-east-1"
