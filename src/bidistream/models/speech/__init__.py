"""Offline streaming speech-to-text served with Deepgram's ``/v1/listen`` API.

Importing this package is cheap: engines (faster-whisper, pocketsphinx,
onnxruntime) are imported only when a profile loads.
"""

from bidistream.models.speech.model import SpeechModel

__all__ = ["SpeechModel"]
