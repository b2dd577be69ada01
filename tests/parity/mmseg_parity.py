"""Optional numerical parity check against mmsegmentation 1.2.2 (not part of the default test run).

mmsegmentation needs its own virtual environment (``mmcv-lite`` has no compiled ops, so
``mmcv.ops`` is stubbed here before mmseg is imported):

    python3 -m venv /tmp/mmseg-venv
    /tmp/mmseg-venv/bin/pip install -c constraints.txt torch mmcv-lite==2.1.0 mmsegmentation==1.2.2 \\
        mmengine ftfy regex "numpy<2"
    /tmp/mmseg-venv/bin/python tests/parity/mmseg_parity.py export /tmp/mmseg_ref.pt
    .venv/bin/python tests/parity/mmseg_parity.py compare /tmp/mmseg_ref.pt

``export`` builds mmseg's MixVisionTransformer (MiT-b0 as in open-cd's changeformer config) and
SegformerHead (in_channels 64/128/320/512 after concat fusion, 256 channels, 2 classes) with
random weights *and random BatchNorm statistics*, runs a fixed pair through them, and saves an
mmseg-style checkpoint (``backbone.*`` + ``decode_head.*``) with the input and outputs.
``compare`` loads that checkpoint into changemap's ``changeformer-mit-b0`` through the normal
weights path (key mapping, strict loading) and prints the largest absolute differences.
"""
from __future__ import annotations

import sys
import types

import torch


def _stub_mmcv_ops() -> None:
    ops = types.ModuleType("mmcv.ops")

    def __getattr__(name: str):  # any compiled op: a placeholder class
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})

    ops.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = ops


def export(path: str) -> None:
    _stub_mmcv_ops()
    import mmseg.models  # noqa: F401  (registers losses etc.)
    from mmseg.models.backbones.mit import MixVisionTransformer
    from mmseg.models.decode_heads.segformer_head import SegformerHead

    torch.manual_seed(0)
    backbone = MixVisionTransformer(in_channels=3, embed_dims=32, num_stages=4, num_layers=[2, 2, 2, 2],
                                    num_heads=[1, 2, 5, 8], patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                                    out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True, drop_rate=0.0,
                                    attn_drop_rate=0.0, drop_path_rate=0.1,
                                    norm_cfg=dict(type="LN", eps=1e-6))
    head = SegformerHead(in_channels=[64, 128, 320, 512], in_index=[0, 1, 2, 3], channels=256, dropout_ratio=0.1,
                         num_classes=2, norm_cfg=dict(type="BN", requires_grad=True), align_corners=False)
    for module in (backbone, head):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.05)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        module.eval()
    x = torch.randn(1, 2, 3, 256, 256)
    with torch.no_grad():
        f1, f2 = backbone(x[:, 0]), backbone(x[:, 1])
        logits = head([torch.cat([a, b], 1) for a, b in zip(f1, f2)])
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"decode_head.{k}": v for k, v in head.state_dict().items()})
    torch.save({"state_dict": state, "meta": {"mmseg_version": "1.2.2"}, "input": x,
                "features": [f.clone() for f in f1], "logits": logits}, path)
    print(f"saved {len(state)} tensors, logits {tuple(logits.shape)} -> {path}")


def compare(path: str) -> None:
    import models

    ref = torch.load(path, map_location="cpu", weights_only=True)
    model = models.create_model("changeformer-mit-b0", weights=path).eval()  # key mapping + strict load
    x = ref["input"]
    with torch.no_grad():
        feats = model.backbone(x[:, 0])
        logits = model.decode_head(model.neck(feats, model.backbone(x[:, 1])))
    feat_diff = max(float((a - b).abs().max()) for a, b in zip(feats, ref["features"]))
    logit_diff = float((logits - ref["logits"]).abs().max())
    print(f"MiT-b0 features: max |diff| {feat_diff:.3g}; SegFormer head logits: max |diff| {logit_diff:.3g} "
          f"(logit scale {float(ref['logits'].abs().max()):.3g})")
    if max(feat_diff, logit_diff) > 1e-4:
        raise SystemExit("parity FAILED (> 1e-4)")
    print("parity OK (<= 1e-4)")


if __name__ == "__main__":
    {"export": export, "compare": compare}[sys.argv[1]](sys.argv[2])
