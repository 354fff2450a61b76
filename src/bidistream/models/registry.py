"""The one registry of built-in models.

Everything that names a built-in derives it from :data:`BUILTINS`: the loader
(``bidistream serve echo``), the control plane's image names
(``PrimaryContainer.Image = "bidistream/echo"``) and the endpoints ``bidistream
run`` creates.  Adding a built-in is one line here.

Nothing is imported until a model is loaded: :meth:`BuiltinModel.available`
only asks whether its module is present in this build (speech needs its extra).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["BUILTINS", "IMAGE_PREFIX", "BuiltinModel", "by_image", "by_name", "names"]

IMAGE_PREFIX = "bidistream/"


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    name: str  # the CLI's MODEL, the endpoint name `run` creates, the image's last component
    target: str  # package.module:Class
    summary: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def image(self) -> str:
        """Its ``PrimaryContainer.Image`` (an optional ``:tag`` is accepted and ignored)."""
        return IMAGE_PREFIX + self.name

    def available(self) -> bool:
        """Whether its module ships in this build (no import: speech's is heavy)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


BUILTINS: tuple[BuiltinModel, ...] = (
    BuiltinModel("echo", "bidistream.models.echo:EchoModel", "sends every frame back"),
    BuiltinModel("words", "bidistream.models.words:WordsModel", "streams the words of each text frame"),
    BuiltinModel("speech", "bidistream.models.speech:SpeechModel", "live speech recognition (Deepgram API)"),
)
_BY_NAME = {m.name: m for m in BUILTINS}


def names() -> list[str]:
    return [m.name for m in BUILTINS]


def by_name(name: str) -> BuiltinModel | None:
    return _BY_NAME.get(name)


def by_image(repository: str) -> BuiltinModel | None:
    """The built-in an image repository (``bidistream/echo``, without tag) names, if any."""
    if not repository.startswith(IMAGE_PREFIX):
        return None
    return _BY_NAME.get(repository[len(IMAGE_PREFIX) :])
