#!/bin/sh
# Container entrypoint: `serve` (what SageMaker passes) runs the model server;
# anything else runs as a bidistream command.
set -e
if [ "${1:-serve}" = "serve" ]; then
  [ $# -gt 0 ] && shift
  exec bidistream serve "${BIDISTREAM_MODEL:-echo}" --host "${BIDISTREAM_HOST:-0.0.0.0}" "$@"
fi
exec bidistream "$@"
