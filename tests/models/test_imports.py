"""The model zoo stands alone: ``models`` imports nothing from ``pipeline``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import models

MODELS = Path(models.__file__).resolve().parent

_SCRIPT = """
import sys, tempfile
from pathlib import Path
import torch
import models
from models.weights import save_checkpoint, WeightsMeta
for name in models.list_models():
    models.create_model(name) if name != "transunet-r50-vit-b16" else None
for name in models.list_backbones():
    models.create_backbone(name)
net = models.create_model("tinycd", weights="levir")  # a known name: copied from the package
path = Path(tempfile.mkdtemp()) / "best.pt"
save_checkpoint(path, net, WeightsMeta(model="tinycd", model_args={"in_channels": 3, "num_classes": 1}))
models.create_model("tinycd", weights=str(path))  # a local path
models.create_model("tinycd", weights=path.as_uri())  # a file:// URL
assert models.weights.checkpoint_model(str(path)) == "tinycd"
loaded = sorted(m for m in sys.modules if m == "pipeline" or m.startswith("pipeline."))
print("PIPELINE MODULES:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_models_imports_nothing_from_pipeline_at_runtime(tmp_path):
    env = {"CHANGEMAP_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=MODELS.parent, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PIPELINE MODULES: []" in run.stdout


def test_no_module_of_models_names_pipeline_in_an_import():
    offenders = []
    for path in sorted(MODELS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(MODELS.parent)}:{node.lineno} {n}" for n in names
                          if n == "pipeline" or n.startswith("pipeline.")]
    assert not offenders, offenders
