"""Open Inference Protocol v2 request bodies, as clients send them."""

from __future__ import annotations

import json

from kiln.serve.v2_codec import encode_bytes_tensor


def binary_request(texts: list[str], **doc: object) -> tuple[bytes, str]:
    """A binary-tensor infer body for one BYTES input ``text`` (JSON header + raw tensor); its header length.

    The length (a string) goes in the ``Inference-Header-Content-Length`` header; ``doc`` adds top-level
    request fields (``id``, ``outputs``, ``parameters``...).
    """
    raw = encode_bytes_tensor(texts)
    tensor = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(texts)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], **doc}).encode()
    return header + raw, str(len(header))
