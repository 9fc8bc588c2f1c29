"""Reading an ONNX file's protobuf fields without the ``onnx`` package (it takes over a second to
import): what the ONNX weights digest (:func:`kface_cli.embedding.embedder.onnx_digest`) hashes."""

from __future__ import annotations

from collections.abc import Iterator

#: The field number of ``graph`` in ONNX's ModelProto (onnx.proto: ``optional GraphProto graph = 7``).
ONNX_GRAPH_FIELD = 7


def protobuf_fields(data: memoryview, number: int) -> Iterator[memoryview]:
    """The encoded values of top-level length-delimited field ``number`` of a protobuf message."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated or malformed protobuf")
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = varint(pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size, pos = varint(pos)
            if pos + size > len(data):
                raise ValueError("truncated protobuf")
            if key >> 3 == number:
                with data[pos : pos + size] as part:
                    yield part
            pos += size
        else:  # groups (3, 4) are not used by ONNX
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
