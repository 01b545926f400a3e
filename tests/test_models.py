"""Model registry, cards, predict and plan (rulefinder.classify.{registry,card,predict,plan} and
the predict / plan / models commands), on a tiny real RuleIdentifier fitted in seconds."""

from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from rulefinder.classify.card import AccuracyCell, ModelCard, card_sha256
from rulefinder.classify.plan import plan
from rulefinder.classify.predict import expected_accuracy, predict_recordings
from rulefinder.classify.registry import (
    CARD_FILE,
    ESTIMATOR_FILE,
    ModelError,
    ModelExistsError,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelRegistry,
    write_model,
)
from rulefinder.cli import app
from rulefinder.recording import make_recording, save_npz
from tests.model_fixtures import synthetic_recording, tiny_card, tiny_estimator

runner = CliRunner()


@pytest.fixture(scope="module")
def fitted():
    est = tiny_estimator()
    return est, tiny_card(est)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, fitted):
    """A packaged-models directory holding a read-only 'default'."""
    root = tmp_path_factory.mktemp("packaged")
    est, card = fitted
    write_model(root / "default", est, card.model_copy(update={"name": "default"}))
    return root


@pytest.fixture()
def registry(tmp_path, packaged):
    return ModelRegistry(tmp_path / "models", packaged_dir=packaged)


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- registry ---------------------------------------------------------------------------


def test_register_load_roundtrip_and_hash(registry, fitted):
    est, card = fitted
    ref = registry.register(est, card, "mine")
    assert ref.name == "mine" and len(ref.sha256) == 64
    loaded = registry.load("mine")
    assert loaded.sha256 == ref.sha256 == card_sha256(loaded.card)
    assert loaded.card.files[ESTIMATOR_FILE]  # every file hashed
    assert loaded.card.estimator == "rulefinder.classify.estimator.RuleIdentifier"
    rec = synthetic_recording(1, 0, seed=999)
    np.testing.assert_allclose(loaded.estimator.predict_proba([rec])["rule"], est.predict_proba([rec])["rule"])
    assert {c.name for c in registry.list()} == {"mine", "default"}
    assert {e.name: e.read_only for e in registry.entries()} == {"mine": False, "default": True}


def test_name_clash_is_an_error_unless_replace(registry, fitted):
    est, card = fitted
    first = registry.register(est, card, "dup")
    with pytest.raises(ModelExistsError, match="replace"):
        registry.register(est, card, "dup")
    second = registry.register(est, card.model_copy(update={"description": "again"}), "dup", replace=True)
    assert second.sha256 != first.sha256
    assert registry.load("dup").card.description == "again"
    # The packaged default is never shadowed silently, and never written.
    with pytest.raises(ModelExistsError, match="default"):
        registry.register(est, card, "default")
    before = {p.name: p.read_bytes() for p in (registry.packaged_dir / "default").iterdir()}
    registry.register(est, card, "default", replace=True)
    assert registry.entry("default").read_only is False  # the data-dir copy shadows it now
    assert {p.name: p.read_bytes() for p in (registry.packaged_dir / "default").iterdir()} == before
    with pytest.raises(ModelError, match="read-only"):
        ModelRegistry(registry.data_dir / "none", packaged_dir=registry.packaged_dir).remove("default")


def test_bad_names_and_missing_models(registry, fitted):
    est, card = fitted
    for bad in ("../x", "a/b", ".hidden", "x" * 101):
        with pytest.raises(ModelError, match="model name"):
            registry.register(est, card, bad)
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'.*default"):
        registry.load("nope")


def test_tampered_estimator_file_fails(tmp_path, packaged):
    path = _copy_model(packaged / "default", tmp_path / "models" / "t")
    data = bytearray((path / ESTIMATOR_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / ESTIMATOR_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"estimator.skops: sha256 is .* expected .* changed or replaced"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("t")


def test_foreign_pickle_is_never_unpickled(tmp_path, packaged):
    path = _copy_model(packaged / "default", tmp_path / "models" / "p")
    (path / ESTIMATOR_FILE).write_bytes(pickle.dumps({"evil": 1}))
    card = json.loads((path / CARD_FILE).read_text())
    from rulefinder.classify.card import file_sha256

    card["files"][ESTIMATOR_FILE] = file_sha256(path / ESTIMATOR_FILE)  # a consistent but foreign model
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="not a skops file.*never unpickled"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("p")


def test_untrusted_types_are_refused(tmp_path, packaged):
    """A skops file holding a type outside the estimator's trusted_types() does not load."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    path = _copy_model(packaged / "default", tmp_path / "models" / "u")
    est = sio.load(path / ESTIMATOR_FILE, trusted=sio.get_untrusted_types(file=path / ESTIMATOR_FILE))
    est.estimators_["rule"] = RandomForestClassifier(n_estimators=2).fit(np.eye(3), [0, 1, 2])
    (path / ESTIMATOR_FILE).write_bytes(sio.dumps(est))
    card = json.loads((path / CARD_FILE).read_text())
    from rulefinder.classify.card import file_sha256

    card["files"][ESTIMATOR_FILE] = file_sha256(path / ESTIMATOR_FILE)
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="does not allow.*(Tree|Forest)"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("u")


def test_card_naming_foreign_estimator_class_is_refused(tmp_path, packaged):
    path = _copy_model(packaged / "default", tmp_path / "models" / "f")
    card = json.loads((path / CARD_FILE).read_text())
    card["estimator"] = "os.system"
    (path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="field 'estimator' is 'os.system'"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("f")
    (path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="card.json: not a JSON model card"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("f")


def test_unlisted_extra_file_is_refused(tmp_path, packaged):
    path = _copy_model(packaged / "default", tmp_path / "models" / "x")
    (path / "extra.pkl").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match=r"files not listed in card.json: \['extra.pkl'\]"):
        ModelRegistry(tmp_path / "models", packaged_dir=None).load("x")


# -- predict ----------------------------------------------------------------------------


def test_prediction_invariant_to_unit_order_stimulus_order_and_scale(registry):
    model = registry.load("default")
    rec = synthetic_recording(0, 1, seed=4242)
    rng = np.random.default_rng(0)
    shuffled = rec.isel(unit=rng.permutation(rec.sizes["unit"]), stimulus=rng.permutation(rec.sizes["stimulus"]))
    scaled = rec * 37.5
    base, perm, scale = predict_recordings([rec, shuffled, scaled], model=model)
    for other in (perm, scale):
        for k, v in base.rule_probabilities.items():
            assert other.rule_probabilities[k] == pytest.approx(v, abs=1e-9)
        assert other.unknown_score == pytest.approx(base.unknown_score, abs=1e-9)
        assert other.verdict == base.verdict
    assert base.model.name == "default" and base.noise == "moderate" and base.n_recordings == 1
    assert sum(base.rule_probabilities.values()) == pytest.approx(1.0)


def test_group_gives_one_result_and_warnings(registry):
    model = registry.load("default")
    recs = [synthetic_recording(2, 0, seed=s, area_order=False) for s in (1, 2, 3)]
    (res,) = predict_recordings(recs, model=model, group=True, noise="high")
    assert res.n_recordings == 3 and res.noise == "high"
    assert any("areas without depth" in w for w in res.warnings)
    few = synthetic_recording(0, 0, seed=5, units=8, sessions=3)
    (r,) = predict_recordings([few], model=model)
    text = " ".join(r.warnings)
    assert "few units" in text and "few sessions" in text and "below the expected-accuracy grid" in text
    flat = make_recording(np.repeat(few.values[:1], 4, axis=0), unit_area=few.unit_area.values, area_order=["a1", "a2"])
    (f,) = predict_recordings([flat], model=model)
    assert any("no learning visible" in w for w in f.warnings)


def test_expected_accuracy_lookup(fitted):
    _, card = fitted
    acc = {(c.units, c.sessions, c.noise): c.accuracy for c in card.expected_accuracy}
    cell, w = expected_accuracy(card, 30, 5, "moderate")  # on the grid
    assert cell.accuracy == acc[(30, 5, "moderate")] and not w
    cell, w = expected_accuracy(card, 64, 21, "none")  # off the grid: nearest smaller cell
    assert (cell.units, cell.sessions) == (30, 10) and cell.accuracy == acc[(30, 10, "none")] and not w
    cell, w = expected_accuracy(card, 4, 2, "high")  # below the grid: the smallest cell plus warnings
    assert (cell.units, cell.sessions) == (10, 3) and len(w) == 2


# -- plan -------------------------------------------------------------------------------


def test_plan(registry, fitted):
    _, card = fitted
    res = plan(12, 4, "moderate", target=0.6, registry=registry)
    assert res.cell.units == 10 and res.cell.sessions == 3
    assert res.confusable_pairs == [["backprop", "feedback_alignment"]]
    assert res.reaches_target is False
    best = res.smallest_for_target
    assert best is not None and best.accuracy >= 0.6
    ok = [c for c in card.expected_accuracy if c.noise == "moderate" and c.accuracy >= 0.6]
    assert best.units * best.sessions == min(c.units * c.sessions for c in ok)
    res = plan(100, 10, "none", target=0.99, registry=registry)
    assert res.smallest_for_target is None and any("no recording on the grid reaches" in w for w in res.warnings)
    with pytest.raises(ValueError, match="noise"):
        plan(10, 3, "loud", registry=registry)


# -- card -------------------------------------------------------------------------------


def test_card_validates_labels_against_catalogue(fitted):
    _, card = fitted
    raw = card.model_dump()
    raw["labels"]["rule"] = ["not_a_rule"]
    with pytest.raises(ValueError, match="not in the card's catalogue"):
        ModelCard.model_validate(raw)
    with pytest.raises(ValueError, match="noise 'loud'"):
        AccuracyCell(units=1, sessions=3, noise="loud", accuracy=0.5)


def test_packaged_default_card_matches_zoo_registry():
    """The shipped model's catalogue is training_zoo's registry at training time: every rule it
    knows still exists with the same family, description, reference and variants."""
    from rulefinder.classify.registry import PACKAGED_DIR, read_card
    from training_zoo.rules import catalogue

    path = PACKAGED_DIR / "default" / CARD_FILE
    if not path.is_file():
        pytest.skip("no packaged default model yet")
    card = read_card(path)
    zoo = {e["id"]: e for e in catalogue()}
    assert set(card.labels["rule"]) <= set(zoo)
    for entry in card.catalogue:
        z = zoo[entry.id]
        assert entry.family == z["family"]
        assert entry.description == z["description"]
        assert entry.reference == z["reference"]
        assert [v.id for v in entry.variants] == [v["id"] for v in z["variants"]]


def test_neighbour_reference_is_float32_on_disk(registry, fitted):
    """The open-set reference (projected rows and the projection) is saved as float32 and
    scores as the fitted estimator does; older formats: tests/test_classify_open_set.py."""
    est, _ = fitted
    loaded = registry.load("default").estimator
    assert loaded.reference_.dtype == np.float32 and loaded.components_.dtype == np.float32
    assert not hasattr(loaded, "neighbors_")
    recs = [synthetic_recording(i % 3, i % 2, 900 + i) for i in range(4)]
    rows = loaded.transform(recs)
    new = loaded.unknown_scores_features(rows)
    assert "_reference_cache" in loaded.__dict__ and "_reference_cache" not in loaded.__getstate__()
    np.testing.assert_allclose(new, est.unknown_scores_features(rows), atol=1e-9)


def test_packaged_default_holds_the_lean_format(tmp_path):
    from rulefinder.classify.registry import PACKAGED_DIR

    if not (PACKAGED_DIR / "default" / CARD_FILE).is_file():
        pytest.skip("no packaged default model yet")
    est = ModelRegistry(tmp_path, packaged_dir=PACKAGED_DIR).load("default").estimator
    assert est.reference_.dtype == np.float32 and not hasattr(est, "neighbors_")


# -- CLI --------------------------------------------------------------------------------


def test_cli_models_predict_plan(tmp_path, monkeypatch, fitted):
    est, card = fitted
    monkeypatch.setenv("RULEFINDER_DATA_DIR", str(tmp_path / "data"))
    ModelRegistry(tmp_path / "data" / "models").register(est, card, "tiny")
    out = runner.invoke(app, ["models", "list", "--json"])
    assert out.exit_code == 0, out.output
    names = {m["name"] for m in json.loads(out.output)}
    assert "tiny" in names
    out = runner.invoke(app, ["models", "show", "tiny", "--json"])
    shown = json.loads(out.output)
    assert shown["card"]["catalogue"] and shown["card"]["expected_accuracy"] and len(shown["sha256"]) == 64
    assert runner.invoke(app, ["models", "show", "tiny"]).exit_code == 0
    assert runner.invoke(app, ["models", "show", "nope"]).exit_code == 2

    paths = []
    for i in range(2):
        p = tmp_path / f"r{i}.npz"
        save_npz(synthetic_recording(i, 0, seed=100 + i), p)
        paths.append(str(p))
    out = runner.invoke(app, ["predict", *paths, "--model", "tiny", "--noise", "none", "--json"])
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    assert len(res) == 2 and all(r["model"]["name"] == "tiny" and r["noise"] == "none" for r in res)
    out = runner.invoke(app, ["predict", *paths, "--model", "tiny", "--group", "--json", "--area-order", "a1,a2"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.output)) == 1 and json.loads(out.output)[0]["n_recordings"] == 2
    out = runner.invoke(app, ["predict", paths[0], "--model", "tiny"])
    assert out.exit_code == 0 and "verdict" in out.output
    out = runner.invoke(app, ["predict", paths[0], "--model", "tiny", "--noise", "loud"])
    assert out.exit_code == 2 and "--noise" in out.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, responses=np.zeros((3, 4)))
    out = runner.invoke(app, ["predict", str(bad), "--model", "tiny"])
    assert out.exit_code == 2 and "bad.npz" in out.output and "expected 3 dimensions" in out.output

    out = runner.invoke(app, ["plan", "--units", "40", "--sessions", "6", "--noise", "moderate", "--target", "0.6", "--model", "tiny", "--json"])
    assert out.exit_code == 0, out.output
    p = json.loads(out.output)
    assert p["cell"]["units"] == 30 and p["cell"]["sessions"] == 5 and p["smallest_for_target"] is not None
    assert runner.invoke(app, ["plan", "--units", "40", "--sessions", "6", "--target", "0.6", "--model", "tiny"]).exit_code == 0
