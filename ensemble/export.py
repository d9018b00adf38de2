"""`ensemble export -o DIR`: every member of an ensemble as ONNX, in a folder that describes itself.

DIR/ensemble.yaml          the ensemble config (members by folder name, the same method, weights, review
                           limits), readable by `ensemble predict --config DIR/ensemble.yaml`
DIR/<member>/model.onnx    the network: input `x` (N, C, spatial...) float32 normalised, output `logits`;
                           batch and spatial sizes dynamic; opset 17
DIR/<member>/model.json    the segmenter's model.json (architecture, channels, labels, label scheme,
                           preprocessing spec, patch, predict settings) plus an `onnx` block
DIR/<member>/importance.npy  MONAI's Gaussian window weights for the training patch (sliding windows)
DIR/locator/               the same for the ensemble's locator (stage one), when it has one

Another runtime needs nothing else: preprocess as `preprocess` says (mricore.preprocess), run the
network slice- or window-wise as segment/onnx_segmenter.py does, decode by `label_scheme`, combine by
`method`. The folder is staged and renamed into place (nothing half-written), and an existing DIR
needs force=True.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from mricore.modelfolder import write_model
from mricore.results import CONFIG_YAML

OPSET = 17


def export_member(member, dest: Path) -> None:
    """One member (ensemble.members.Member) into `dest`: model.onnx, model.json, importance.npy."""
    import torch
    from monai.data.utils import compute_importance_map

    seg = member.segmenter
    cfg = seg.model_cfg
    c = len(seg.spec.channels) * (2 * cfg.context + 1 if cfg.spatial_dims == 2 else 1)
    dummy = torch.zeros((2, c, *seg.patch))
    spatial = {i + 2: f"s{i}" for i in range(cfg.spatial_dims)}
    dest.mkdir(parents=True)
    with warnings.catch_warnings():  # the TorchScript exporter warns about instance norm in eval mode
        warnings.simplefilter("ignore")
        torch.onnx.export(seg.net.eval(), dummy, str(dest / "model.onnx"), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n", **spatial}, "logits": {0: "n", **spatial}},
                          opset_version=OPSET, dynamo=False)
    imp = compute_importance_map(tuple(seg.patch), mode="gaussian", sigma_scale=0.125, device="cpu")
    np.save(dest / "importance.npy", imp.numpy().astype(np.float32))
    onnx = {"file": "model.onnx", "opset": OPSET, "input": "x (N, C, spatial...) normalised float32",
            "output": "logits (N, outputs, spatial...)", "importance": "importance.npy",
            "exported_from": member.path.name}
    write_model(dest, replace(member.meta, onnx=onnx))


def export(config, out_dir, force: bool = False) -> Path:
    """Export the ensemble of `config` (an EnsembleConfig, a YAML path or None for the bundle) to `out_dir`."""
    from mricore.config import to_dict
    from mricore.errors import OutputExistsError

    from .members import read_locator, read_members
    from .predict import resolve_config

    cfg = resolve_config(config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, "export folder exists", "an existing folder", "pass --force to replace it")
    members = read_members(cfg.members)
    for m in members:
        if not hasattr(m.segmenter, "net"):
            from mricore.errors import ConfigError

            raise ConfigError(f"member {m.path}", "is an ONNX export already", "an ONNX member",
                              "export the PyTorch model folders (written by `segment train` or `ensemble pack`)")
    from mricore.outputs import replaced_dir

    with replaced_dir(out) as tmp:
        for m in members:
            export_member(m, tmp / m.name.replace("/", "_"))
        d = to_dict(cfg)
        d["members"] = [m.name.replace("/", "_") for m in members]
        if cfg.locator:  # stage one travels with the members
            export_member(read_locator(str(cfg.locator)), tmp / "locator")
            d["locator"] = "locator"
        (tmp / CONFIG_YAML).write_text("# Written by `ensemble export`: ONNX members, run by ONNX Runtime.\n"
                                           + yaml.safe_dump(d, sort_keys=False))
    return out
