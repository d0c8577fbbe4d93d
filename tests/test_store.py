"""Results store: stable keys, round trips, atomic files, caching and resumable sweeps."""

import math

import numpy as np
import pytest
import torch

from hessian_lib.store import ResultsStore, atomic_write_bytes, config_key


def test_key_is_stable_and_order_free():
    a = {"x": 1, "y": (1, 2), "z": {"b": 2.5, "a": "s"}}
    b = {"z": {"a": "s", "b": 2.5}, "y": [1, 2], "x": 1}
    assert config_key(a) == config_key(b)
    assert len(config_key(a)) == 16
    assert config_key(a) != config_key({**a, "x": 2})


def test_round_trip_scalars_arrays_and_non_finite(tmp_path):
    store = ResultsStore(tmp_path)
    config = {"experiment": "demo", "n": 3}
    store.save(config, {"mean": 1.5, "name": "ok", "bad": float("nan"), "big": float("inf"),
                        "history": [{"a": 1}], "xs": np.arange(4.0), "t": torch.ones(2, 3)})
    assert store.has(config) and not store.has({"experiment": "demo", "n": 4})
    out = store.load(config)
    assert out["mean"] == 1.5 and out["name"] == "ok" and out["history"] == [{"a": 1}]
    assert math.isnan(out["bad"]) and out["big"] == math.inf
    np.testing.assert_array_equal(out["xs"], np.arange(4.0))
    assert out["t"].shape == (2, 3)
    assert [k for k, _ in store.entries()] == [config_key(config)]
    with pytest.raises(KeyError):
        store.load({"experiment": "other"})


def test_cached_computes_once(tmp_path):
    store = ResultsStore(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert store.cached({"k": 1}, compute)["value"] == 1
    assert store.cached({"k": 1}, compute)["value"] == 1
    assert len(calls) == 1
    assert store.cached({"k": 1}, compute, recompute=True)["value"] == 2


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"123")
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"456")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"456"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.bin"]


def test_interrupted_sweep_keeps_finished_points_and_resumes(tmp_path):
    store = ResultsStore(tmp_path)
    done = []

    def run(points, fail_at=None):
        for p in points:
            def compute(p=p):
                if p == fail_at:
                    raise KeyboardInterrupt
                done.append(p)
                return {"square": p * p}
            store.cached({"point": p}, compute)

    with pytest.raises(KeyboardInterrupt):
        run([1, 2, 3, 4], fail_at=3)
    assert done == [1, 2] and store.has({"point": 2}) and not store.has({"point": 3})
    run([1, 2, 3, 4])
    assert done == [1, 2, 3, 4]
    assert store.load({"point": 4})["square"] == 16
