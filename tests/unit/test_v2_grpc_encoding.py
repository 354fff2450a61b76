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
