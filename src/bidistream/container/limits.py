"""Named limits of the model server, with safe defaults.

Each limit is a security or latency bound a client can hit; the close code or
HTTP status it produces comes from the error it raises (see ``errors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerLimits:
    # Largest WebSocket message accepted (close 1009 above it).  SageMaker documents
    # no bidi limit; Deepgram's own sample sends 512 KiB parts, so 16 MiB leaves room.
    max_message_size: int = 16 * MiB
    # Live sessions one instance takes before refusing with close 1013, so a full
    # instance says so early and the router tries another one.
    max_sessions: int = 256
    # A session is closed (1008) after this long; SageMaker's reported cap is 30 min.
    max_session_duration: float = 30 * 60.0
    # No frame in either direction for this long closes the session (1011).
    idle_timeout: float = 10 * 60.0
    # On SIGTERM, live sessions get this long to finish before a 1001 close.
    # SageMaker sends SIGKILL 30 s after SIGTERM, so stay under it.
    drain_timeout: float = 25.0
    # POST /invocations must answer within this (SageMaker's InvokeEndpoint rule).
    invoke_timeout: float = 60.0
    # Largest POST /invocations body.  InvokeEndpoint documents 6 MB, but the NIM seed
    # uploads files up to 25 MB (its gRPC route) and boto3 sends any size, so the
    # container takes 25 MB files with multipart/base64 overhead to spare.
    max_invoke_body: int = 36 * MiB
    # The contract's accept deadline (C3): the 101 goes out within this of the upgrade
    # reaching the handler, or the upgrade is refused with 503 (the router tries another
    # instance).  Only a model's check_session can spend it: the server does no work there.
    accept_deadline: float = 0.250
