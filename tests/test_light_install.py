"""The light core install: recordings, features, classify, the client and the CLI import and
predict with torch, ray, fastapi (and training_zoo, api, pipelines) unimportable.

A ``sys.meta_path`` finder in a fresh interpreter raises ImportError for the heavy packages,
as on a machine where only ``pip install rulefinder`` (no extras) ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rulefinder.classify.registry import PACKAGED_DIR, ModelRegistry

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "ray", "fastapi", "uvicorn", "starlette", "mlxtend", "training_zoo", "api", "pipelines")

SCRIPT = textwrap.dedent(
    """
    import json, sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the light install has no such package")
            return None

    sys.meta_path.insert(0, Block())

    import rulefinder, rulefinder.recording, rulefinder.features, rulefinder.virtual, rulefinder.store
    import rulefinder.classify.card, rulefinder.classify.registry, rulefinder.classify.predict
    import rulefinder.classify.plan, rulefinder.classify.estimator, rulefinder.client
    from rulefinder.cli import app

    def run(*args):
        try:
            app(list(args), prog_name="rulefinder")
        except SystemExit as exc:
            if exc.code:
                raise
    model = sys.argv[1]
    run("predict", "examples/mlp_backprop.npz", "examples/ophys_mouse", "--model", model, "--json")
    run("plan", "--units", "30", "--sessions", "5", "--model", model, "--json")
    run("models", "list")
    run("inspect", "examples/mlp_backprop.zarr.zip")
    if model == "default":
        run("rules", "--json")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("HEAVY", json.dumps(heavy))
    """
)


def test_core_predicts_without_torch_ray_fastapi(tmp_path, request):
    env = dict(os.environ, RULEFINDER_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    if (PACKAGED_DIR / "default" / "card.json").is_file():
        model = "default"
    else:  # before a default ships: a tiny model registered for this test
        from tests.model_fixtures import tiny_card, tiny_estimator

        est = tiny_estimator()
        ModelRegistry(tmp_path / "data" / "models").register(est, tiny_card(est), "tiny")
        model = "tiny"
    script = tmp_path / "light.py"
    script.write_text(SCRIPT.format(blocked=BLOCKED))
    proc = subprocess.run(
        [sys.executable, str(script), model], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    predictions = json.loads(out[: out.index("]\n{") + 1]) if "]\n{" in out else None
    assert predictions is not None and len(predictions) == 2, out[:2000]
    assert all(p["model"]["name"] == model for p in predictions)
    assert json.loads(out.split("HEAVY ")[-1]) == []
