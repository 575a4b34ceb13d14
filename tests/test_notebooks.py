"""The notebooks run top to bottom (code cells executed in order, offline stand-in weights)."""
import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


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
