"""The SavedModel export runs the U-Net's transposed decoder form (the default), whole and tiled,
and the explicit layers for a model built with `transposed_decoder=False`."""

from pathlib import Path

import pytest
from tensorflow.core.protobuf import saved_model_pb2

from vxmtf.export import export_saved_model
from vxmtf.networks import VxmDense

SMALL = {"enc_features": (4, 8, 8, 8), "dec_features": (8, 8, 8, 8, 8, 4, 4)}


def exported_op_types(export_dir):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "whole"])
def test_export_follows_the_decoder_form(tiled, tmp_path):
    for transposed in (True, False):
        model = VxmDense((16, 16, 16), int_steps=0, transposed_decoder=transposed, **SMALL)
        export_dir = export_saved_model(model, tmp_path / str(transposed), tiled=tiled)
        ops = exported_op_types(export_dir)
        assert ("Conv3DBackpropInputV2" in ops) is transposed
