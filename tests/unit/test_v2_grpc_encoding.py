"""The gRPC face's pre-encoded stream responses are the bytes the stubs would write.

``FrameEncoder`` writes each native stream response around prefixes the
stubs serialised once; these tests hold it to ``SerializeToString`` of the
message ``response_to_pb`` builds, byte for byte, for both stub sets
(MLServer's and tritonclient's cannot share one process's descriptor pool, so
each runs in a child), and check each stub set parses it back.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
{stub_import}
from bidistream.container.v2_grpc import FrameEncoder, response_to_pb
from bidistream.frames import Frame
from bidistream.protocols.v2.codec import InferResponse
from bidistream.protocols.v2.frames import frame_tensor

frames = [Frame.text(""), Frame.text("tok1"), Frame.text("\\u00e9\\u4e2d" * 700), Frame.binary(b"")]
# Lengths either side of one-, two- and three-byte varints (raw adds a 4-byte prefix).
frames += [Frame.binary(b"\\xff" * n) for n in (1, 123, 124, 127, 128, 16379, 16380, 16383, 16384, 70000)]
checked = 0
for use_raw in (False, True):
    for version in (None, "", "v2"):
        for rid, output in (("abc", "output"), ("x" * 200, "out_" * 40)):
            encoder = FrameEncoder(pb, model_name="words", model_version=version, rid=rid, output=output,
                                   use_raw=use_raw)
            for frame in frames:
                response = InferResponse(model_name="words", model_version=version, id=rid,
                                         outputs=[frame_tensor(frame, output)])
                want = response_to_pb(pb, response, use_raw=use_raw).SerializeToString()
                got = encoder.encode(frame)
                assert got == want, (use_raw, version, rid[:5], output[:5], frame)
                parsed = pb.ModelInferResponse.FromString(got)
                assert parsed.id == rid and parsed.outputs[0].name == output
                if use_raw:
                    assert parsed.raw_output_contents[0][4:] == frame.data
                else:
                    assert parsed.outputs[0].contents.bytes_contents[0] == frame.data
                checked += 1
print(checked)
"""


@pytest.mark.parametrize(
    "stub_import",
    [
        "from tritonclient.grpc import service_pb2 as pb",
        "import mlserver\nfrom mlserver.grpc import dataplane_pb2 as pb",
    ],
    ids=["tritonclient", "mlserver"],
)
def test_frame_encoder_matches_serialize_to_string(stub_import: str) -> None:
    script = SCRIPT.format(stub_import=stub_import)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 2 * 3 * 2 * 14


MLSERVER_SCRIPT = """
import copy
import mlserver
from mlserver.codecs import StringCodec
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferResponseConverter
from mlserver.types import InferenceResponse, Parameters, ResponseOutput
from bidistream.container.mlserver_grpc import ResponseEncoder

def responses():
    for word in ["", "tok1", "\\u00e9" * 100, "x" * 20000]:
        yield InferenceResponse(model_name="tokens", id="rid-1",
            outputs=[StringCodec.encode_output(name="output", payload=[word], use_bytes=True)])
    yield InferenceResponse(model_name="tokens", model_version="v1", id="r",
        parameters=Parameters(content_type="str", headers={"ce-id": "1"}, extra_int=3, flag=True, ratio=0.5),
        outputs=[ResponseOutput(name="a", shape=[2, 1], datatype="BYTES",
                                parameters=Parameters(content_type="str"), data=[b"one", b"two"]),
                 ResponseOutput(name="b", shape=[0], datatype="BYTES", data=[])])
    # Not BYTES elements: the encoder hands these to MLServer's converter.
    yield InferenceResponse(model_name="tokens", outputs=[ResponseOutput(name="n", shape=[2], datatype="FP32",
                                                                           data=[1.5, 2.0])])

checked = fallbacks = 0
for use_raw in (False, True):
    encoder = ResponseEncoder(pb, use_raw=use_raw)
    for _ in range(2):  # the second pass takes the cached shapes
        for response in responses():
            want_msg = ModelInferResponseConverter.from_types(copy.deepcopy(response), use_raw=use_raw)
            got = encoder.encode(response)
            if not isinstance(got, bytes):
                fallbacks += 1
                got = got.SerializeToString()
            assert pb.ModelInferResponse.FromString(got) == want_msg, (use_raw, response)
            if len(want_msg.parameters) <= 1 and all(len(o.parameters) <= 1 for o in want_msg.outputs):
                assert got == want_msg.SerializeToString(), (use_raw, response)
            checked += 1
print(checked, fallbacks)
"""


def test_mlserver_response_encoder_matches_mlservers_converter() -> None:
    done = subprocess.run(
        [sys.executable, "-c", MLSERVER_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["24", "4"]
