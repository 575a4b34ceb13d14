"""The notebooks run top to bottom (code cells executed in order, offline stand-in weights).

inference.ipynb has its own tests: saved clean (default) and executed by a Jupyter kernel
(nbclient) against the tiny random model directory of tests/predict_helpers.py (slow: a fresh
kernel loads the model and compiles the pipeline)."""
import json
import pathlib
import re

import pytest

from predict_helpers import ROOT, subprocess_env, tiny_model_dir

# Notebooks with their own execution tests (they need a trained model directory):
# inference.ipynb below, ablations.ipynb in tests/test_demo.py (on the smoke demo's model).
OWN_TESTS = {"inference.ipynb", "ablations.ipynb"}
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if p.name not in OWN_TESTS)
INFERENCE = ROOT / "notebooks" / "inference.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.setenv("COPROP_NOTEBOOK_DIR", str(tmp_path))
  for var in ("COPROP_PVT_SRC", "COPROP_PVT_VARIANT"):
    monkeypatch.delenv(var, raising=False)
  nb = json.loads(path.read_text())
  scope = {"__name__": "__notebook__"}
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
      continue
    src = "".join(cell["source"])
    assert not any(l.lstrip().startswith(("!", "%")) for l in src.splitlines()), \
        f"{path.name} cell {i}: shell/magic lines cannot run outside Jupyter"
    exec(compile(src, f"{path.name}[cell {i}]", "exec"), scope)
  if "MAX_DIFF" in scope:  # notebooks that compare against a reference record it
    assert scope["MAX_DIFF"] < 1e-4


@pytest.mark.parametrize("name", sorted(OWN_TESTS))
def test_model_notebooks_saved_clean_and_import_the_library(name):
  """Saved without outputs; the path cell defaults to the demo's model and takes COPROP_MODEL_DIR;
  the cells import the library and define no networks or pipeline code of their own."""
  nb = json.loads((ROOT / "notebooks" / name).read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
  src = ["".join(c["source"]) for c in code]
  assert 'os.environ.get("COPROP_MODEL_DIR", "/tmp/coprop_demo/model")' in src[0]
  text = "\n".join(src)
  imported = set(re.findall(r"^\s*(?:from|import) ([\w.]+)", text, re.M))
  roots = {m.split(".")[0] for m in imported}
  assert "coprop_jax" in roots
  assert roots <= {"os", "pathlib", "io", "numpy", "IPython", "matplotlib", "ml_collections", "coprop_jax",
                   "data_pipelines"}, imported
  assert not re.search(r"\b(jax|flax|lax)\.", text) and "class " not in text
  assert not any(l.lstrip().startswith(("!", "%")) for s in src for l in s.splitlines())


@pytest.mark.slow  # ~40 s: a fresh kernel restores the model and compiles VGGish, the KPF, the scan
def test_inference_notebook_executes_with_nbclient(tmp_path_factory, tmp_path, monkeypatch):
  import nbformat
  from nbclient import NotebookClient
  model = tiny_model_dir(tmp_path_factory)
  for k, v in subprocess_env(COPROP_MODEL_DIR=model).items():   # the kernel inherits the env
    monkeypatch.setenv(k, v)
  nb = nbformat.read(str(INFERENCE), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
  assert f"model: {model}" in text and "control points (cosine) [1," in text and "mean J" in text
  pngs = [o for o in outs if "image/png" in o.get("data", {})]
  assert len(pngs) == 2   # the overlay grid and the timeline
