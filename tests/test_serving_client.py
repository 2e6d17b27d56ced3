"""A TF Serving REST client for a `vxmtf.export` SavedModel, and its test.

The client (`register`, `warp_labels`, `preprocessing`) needs only NumPy and the standard
library: it posts raw volumes in TF Serving's columnar JSON format to
`http://<host>:8501/v1/models/<name>:predict` and reads the outputs back. The test serves a small
export over HTTP from this process, each request run through TensorFlow's C API loader (the
loader TF Serving uses; `export_cpp_loader.py`) in a process without TensorFlow's Python package
or vxmtf, and compares with `vxmtf.registration.Registrator` on the same arrays.
"""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from test_export import RAW_CONFIG, make_model, raw_volumes, run_with_c_api

from vxmtf.export import export_saved_model
from vxmtf.registration import Registrator

# --- the client ----------------------------------------------------------------------------


def predict(url, signature, inputs, timeout=600):
    """POST `{"signature_name": signature, "inputs": {...}}` to `url` (`.../v1/models/vxm:predict`)
    and return the outputs as float32 arrays, by name."""
    body = {
        "signature_name": signature,
        "inputs": {name: np.asarray(x, np.float32).tolist() for name, x in inputs.items()},
    }
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        outputs = json.loads(response.read())["outputs"]
    # TF Serving drops the names when a signature has a single output.
    if not isinstance(outputs, dict):
        return {None: np.asarray(outputs)}
    return {name: np.asarray(value) for name, value in outputs.items()}


def register(url, moving, fixed):
    """Registers the raw volume `moving` onto `fixed` (both `(*spatial)`, one grid, any
    intensities: the export normalises them as its training run did).

    Returns:
        `(displacement, moved)`: `(*spatial, ndim)` in voxels (`moved[x] = moving[x + u[x]]`)
        and the moving image warped onto the fixed grid.
    """
    out = predict(
        url, "serving_default", {"moving": moving[None, ..., None], "fixed": fixed[None, ..., None]}
    )
    return out["displacement"][0].astype(np.float32), out["moved"][0, ..., 0].astype(np.float32)


def warp_labels(url, labels, displacement):
    """The moving image's label map `(*spatial)` brought onto the fixed grid by a served
    displacement (nearest neighbour: the labels keep their values)."""
    inputs = {"image": labels[None, ..., None], "displacement": displacement[None]}
    (warped,) = predict(url, "warp", inputs).values()
    return np.rint(warped[0, ..., 0]).astype(labels.dtype)


def preprocessing(url):
    """What the export does to its inputs: `downsample`, `multiple`, `prepares_inputs`, ..."""
    return {name: value.tolist() for name, value in predict(url, "preprocessing", {}).items()}


# --- a stand-in model server: HTTP in front of the C API loader ----------------------------


def serve_over_http(export_dir, tmp_path):
    """An HTTP server answering `:predict` requests as TF Serving does (columnar format), each
    one run through the C API loader. Returns `(server, url)`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            signature = body.get("signature_name", "serving_default")
            inputs = {
                f"{signature}.{name}": np.asarray(value, np.float32)
                for name, value in body["inputs"].items()
            }
            # The C loader returns numbers (not the string `normalize`).
            fetch = None
            if not inputs:
                fetch = {signature: ["percentiles", "downsample", "multiple", "prepares_inputs"]}
            out = run_with_c_api(export_dir, inputs, tmp_path, fetch)
            outputs = {k.split(".", 1)[1]: v.tolist() for k, v in out.items()}
            if len(outputs) == 1:
                (outputs,) = outputs.values()
            reply = json.dumps({"outputs": outputs}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1/models/vxm:predict"


def test_rest_client_against_the_export(tmp_path):
    model = make_model()
    path = export_saved_model(model, tmp_path / "models", config=RAW_CONFIG)
    moving, fixed = (x[0, ..., 0] for x in raw_volumes(np.random.default_rng(11), 1, (21, 18, 23)))
    labels = np.random.default_rng(12).integers(0, 5, size=moving.shape).astype(np.int16)
    server, url = serve_over_http(path, tmp_path)
    try:
        record = preprocessing(url)
        displacement, moved = register(url, moving, fixed)
        warped = warp_labels(url, labels, displacement)
    finally:
        server.shutdown()
        server.server_close()
    assert record["downsample"] == 2 and record["multiple"] == 16 and record["prepares_inputs"]
    registrator = Registrator(model, RAW_CONFIG)
    expected = registrator.register(moving, fixed)
    np.testing.assert_allclose(displacement, expected.displacement, atol=1e-4)
    np.testing.assert_allclose(moved, expected.moved, atol=1e-4, rtol=1e-5)
    np.testing.assert_array_equal(warped, registrator.warp_labels(labels, displacement))
    assert warped.dtype == labels.dtype
