"""client layer of bidistream: an async session SDK over the official bidi client."""

from bidistream.client.session import Client, ClientSession, translate_error

__all__ = ["Client", "ClientSession", "translate_error"]
