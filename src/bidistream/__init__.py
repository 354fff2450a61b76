"""bidistream: self-hosted bidirectional-streaming inference."""

from bidistream.frames import Frame, FrameKind
from bidistream.model import Model, Request, Response, Session

__all__ = ["Frame", "FrameKind", "Model", "Request", "Response", "Session"]
__version__ = "0.1.0"
