"""Write the example recordings in examples/ (run: python examples/make_examples.py).

The responses come from a small two-hidden-layer network trained by gradient descent in
numpy on a random-teacher classification task: its hidden layers are two "areas", its
checkpoints are sessions and a fixed probe set is the stimuli. The same network is written in
every upload format, plus two NWB versions the way a lab would record them (calcium imaging
with noise and a unit lost mid-way; extracellular spike units).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from rulefinder.recording import make_recording, save_npz, save_zarr_zip, write_nwb_sessions

HERE = Path(__file__).resolve().parent


def train_network(seed: int = 0, sessions: int = 12, probes: int = 24):
    rng = np.random.default_rng(seed)
    n_in, n_h1, n_h2, n_out = 20, 24, 16, 4
    teacher = rng.normal(size=(n_in, n_out))
    x_train = rng.normal(size=(2000, n_in))
    y_train = np.argmax(x_train @ teacher, axis=1)
    x_probe = rng.normal(size=(probes, n_in))
    y_probe = np.argmax(x_probe @ teacher, axis=1)
    w1 = rng.normal(size=(n_in, n_h1)) / np.sqrt(n_in)
    w2 = rng.normal(size=(n_h1, n_h2)) / np.sqrt(n_h1)
    w3 = rng.normal(size=(n_h2, n_out)) / np.sqrt(n_h2)
    steps = np.unique(np.geomspace(1, 400, sessions - 1).astype(int))
    steps = np.concatenate([[0], steps])[:sessions]
    responses, accuracy = [], []
    step = 0
    for target in steps:
        while step < target:
            idx = rng.integers(0, len(x_train), 32)
            x, y = x_train[idx], y_train[idx]
            h1 = np.tanh(x @ w1)
            h2 = np.tanh(h1 @ w2)
            z = h2 @ w3
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            d3 = p / len(y)
            d2 = (d3 @ w3.T) * (1 - h2**2)
            d1 = (d2 @ w2.T) * (1 - h1**2)
            w3 -= 0.5 * h2.T @ d3
            w2 -= 0.5 * h1.T @ d2
            w1 -= 0.5 * x.T @ d1
            step += 1
        h1 = np.tanh(x_probe @ w1)
        h2 = np.tanh(h1 @ w2)
        responses.append(np.concatenate([h1, h2], axis=1))
        accuracy.append(float(np.mean(np.argmax(h2 @ w3, 1) == y_probe)))
    areas = np.array(["hidden1"] * n_h1 + ["hidden2"] * n_h2)
    return make_recording(
        np.stack(responses),
        session_time=steps.astype(float),
        unit_area=areas,
        performance=np.array(accuracy),
        area_order=["hidden1", "hidden2"],
    )


def main() -> None:
    rec = train_network()
    save_npz(rec, HERE / "mlp_backprop.npz")
    save_zarr_zip(rec, HERE / "mlp_backprop.zarr.zip")

    # A calcium-imaging version: non-negative dF/F with noise, sessions on days 0, 2, 3, 5,
    # 8, 9 (irregular), areas as imaging planes, one unit lost from tracking on the last day.
    rng = np.random.default_rng(1)
    days = np.array([0.0, 2.0, 3.0, 5.0, 8.0, 9.0])
    picks = np.linspace(0, rec.sizes["session"] - 1, days.size).round().astype(int)
    ophys = rec.isel(session=picks).values
    ophys = np.log1p(np.exp(3 * ophys)) / 3 + 0.05 * rng.normal(size=ophys.shape)
    ophys[-1, :, 5] = np.nan
    areas = np.where(rec.coords["unit_area"].values == "hidden1", "V1", "LM")
    ophys_rec = make_recording(
        ophys,
        session_time=days,
        unit_area=areas,
        performance=rec.coords["performance"].values[picks],
    )
    out = HERE / "ophys_mouse"
    shutil.rmtree(out, ignore_errors=True)
    write_nwb_sessions(
        ophys_rec, out, kind="ophys", container="DfOverF", trials_per_stimulus=2, cache_spec=False
    )

    # Extracellular spike units: Poisson-like spike counts per 1-s trial from the rates.
    counts = rng.poisson(4.0 * (1.0 + np.tanh(rec.isel(session=picks[:5]).values)))
    units_rec = make_recording(
        counts.astype(float),
        session_time=days[:5],
        unit_area=np.where(rec.coords["unit_area"].values == "hidden1", "CA1", "CA3"),
    )
    out = HERE / "ephys_units"
    shutil.rmtree(out, ignore_errors=True)
    write_nwb_sessions(units_rec, out, kind="units", cache_spec=False)


if __name__ == "__main__":
    main()
