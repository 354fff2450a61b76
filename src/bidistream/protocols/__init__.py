"""API faces a model can wear: sans-I/O translation between one API's wire shapes and the model.

Each module parses its API's requests into plain values and renders the
model's results (the neutral shapes in :mod:`bidistream.protocols.asr`) back
into that API's bodies and errors.  None of them touches a socket.
"""
