"""Run a SavedModel signature through TensorFlow's C API, as TF Serving's C++ loader does.

Helper for `tests/test_export.py` (not a test module). It never imports TensorFlow's Python
package: it loads `libtensorflow_cc.so.2` with ctypes, calls `TF_LoadSessionFromSavedModel` with
the tag "serve" (which restores `variables/` and runs the init ops, like TF Serving) and feeds
the signature's tensors by graph name with `TF_SessionRun`.

    python tests/export_cpp_loader.py LIBRARY EXPORT_DIR SPEC_JSON INPUTS_NPZ OUTPUTS_NPZ

SPEC_JSON maps each signature to run to the graph names of its tensors (from the SignatureDef):
`{signature: {"inputs": {key: "op:index"}, "outputs": {key: "op:index"}}}`. INPUTS_NPZ holds a
float32 array `"<signature>.<key>"` per input (a signature may have none, as `preprocessing`); the
outputs (float32, int32 or bool) are written to OUTPUTS_NPZ under the same kind of name. Exits
non-zero with the C API's message on failure.
"""

import ctypes
import json
import sys

import numpy as np

TF_FLOAT = 1  # TF_DataType values from tensorflow/c/tf_datatype.h
TF_INT32 = 3
TF_BOOL = 10
DTYPES = {TF_FLOAT: np.float32, TF_INT32: np.int32, TF_BOOL: np.bool_}
TF_OK = 0


class TF_Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def _bind(lib):
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures = {
        "TF_NewStatus": (p, []),
        "TF_DeleteStatus": (None, [p]),
        "TF_GetCode": (i, [p]),
        "TF_Message": (s, [p]),
        "TF_NewGraph": (p, []),
        "TF_DeleteGraph": (None, [p]),
        "TF_NewSessionOptions": (p, []),
        "TF_DeleteSessionOptions": (None, [p]),
        "TF_NewBuffer": (p, []),
        "TF_DeleteBuffer": (None, [p]),
        "TF_LoadSessionFromSavedModel": (p, [p, p, s, ctypes.POINTER(s), i, p, p, p]),
        "TF_CloseSession": (None, [p, p]),
        "TF_DeleteSession": (None, [p, p]),
        "TF_GraphOperationByName": (p, [p, s]),
        "TF_AllocateTensor": (p, [i, ctypes.POINTER(ctypes.c_int64), i, ctypes.c_size_t]),
        "TF_DeleteTensor": (None, [p]),
        "TF_TensorData": (p, [p]),
        "TF_TensorByteSize": (ctypes.c_size_t, [p]),
        "TF_TensorType": (i, [p]),
        "TF_NumDims": (i, [p]),
        "TF_Dim": (ctypes.c_int64, [p, i]),
        "TF_SessionRun": (
            None,
            [p, p, ctypes.POINTER(TF_Output), ctypes.POINTER(p), i]
            + [ctypes.POINTER(TF_Output), ctypes.POINTER(p), i, ctypes.POINTER(p), i, p, p],
        ),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def _check(lib, status, what):
    if lib.TF_GetCode(status) != TF_OK:
        message = lib.TF_Message(status).decode()
        raise SystemExit(f"{what} failed (code {lib.TF_GetCode(status)}): {message}")


def _output(lib, graph, tensor_name):
    op_name, index = tensor_name.rsplit(":", 1)
    op = lib.TF_GraphOperationByName(graph, op_name.encode())
    if not op:
        raise SystemExit(f"Operation {op_name!r} not found in the loaded graph")
    return TF_Output(op, int(index))


def _to_tensor(lib, array):
    array = np.ascontiguousarray(array, dtype=np.float32)
    dims = (ctypes.c_int64 * array.ndim)(*array.shape)
    tensor = lib.TF_AllocateTensor(TF_FLOAT, dims, array.ndim, array.nbytes)
    ctypes.memmove(lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor


def _from_tensor(lib, tensor):
    dtype = DTYPES.get(lib.TF_TensorType(tensor))
    if dtype is None:
        raise SystemExit(
            f"Expected a float32, int32 or bool output, got TF_DataType {lib.TF_TensorType(tensor)}"
        )
    shape = [lib.TF_Dim(tensor, k) for k in range(lib.TF_NumDims(tensor))]
    size = lib.TF_TensorByteSize(tensor)
    buffer = (ctypes.c_char * size).from_address(lib.TF_TensorData(tensor))
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape)


def run(library, export_dir, spec, inputs):
    """Load `export_dir` once and run every signature of `spec`; returns the named outputs."""
    lib = _bind(ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL))
    status = lib.TF_NewStatus()
    graph = lib.TF_NewGraph()
    options = lib.TF_NewSessionOptions()
    meta_graph = lib.TF_NewBuffer()
    tags = (ctypes.c_char_p * 1)(b"serve")
    session = lib.TF_LoadSessionFromSavedModel(
        options, None, export_dir.encode(), tags, 1, graph, meta_graph, status
    )
    _check(lib, status, "TF_LoadSessionFromSavedModel")

    outputs = {}
    for signature, names in spec.items():
        keys = list(names["inputs"])
        feeds = (TF_Output * len(keys))(*[_output(lib, graph, names["inputs"][k]) for k in keys])
        arrays = [inputs[f"{signature}.{k}"] for k in keys]
        values = (ctypes.c_void_p * len(keys))(*[_to_tensor(lib, a) for a in arrays])
        fetched = list(names["outputs"])
        fetches = (TF_Output * len(fetched))(
            *[_output(lib, graph, names["outputs"][k]) for k in fetched]
        )
        results = (ctypes.c_void_p * len(fetched))()
        lib.TF_SessionRun(
            session,
            None,
            feeds,
            values,
            len(keys),
            fetches,
            results,
            len(fetched),
            None,
            0,
            None,
            status,
        )
        _check(lib, status, f"TF_SessionRun({signature})")
        for k, name in enumerate(fetched):
            outputs[f"{signature}.{name}"] = _from_tensor(lib, results[k])
        for tensor in list(values) + list(results):
            lib.TF_DeleteTensor(tensor)

    lib.TF_CloseSession(session, status)
    lib.TF_DeleteSession(session, status)
    lib.TF_DeleteBuffer(meta_graph)
    lib.TF_DeleteSessionOptions(options)
    lib.TF_DeleteGraph(graph)
    lib.TF_DeleteStatus(status)
    return outputs


def main(argv):
    library, export_dir, spec_json, inputs_npz, outputs_npz = argv
    with open(spec_json) as file:
        spec = json.load(file)
    with np.load(inputs_npz) as data:
        inputs = {key: data[key] for key in data.files}
    outputs = run(library, export_dir, spec, inputs)
    np.savez(outputs_npz, **outputs)
    # The whole point: neither TensorFlow's Python package nor vxmtf was needed.
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "vxmtf"))
    if loaded:
        raise SystemExit(f"Python modules that should not be loaded: {loaded}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
