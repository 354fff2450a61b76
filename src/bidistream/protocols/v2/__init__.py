"""The V2 / Open Inference Protocol face (KServe V2, MLServer, Triton's shared core).

``codec`` parses and renders V2 JSON; ``frames`` maps tensors to Frames;
``backend`` adapts a Model to the calls REST, SSE and gRPC make; ``triton``
wraps stream responses in Triton's envelope.  Nothing here touches a socket.
"""
