"""The Theory chapter's simulations: reproducible, and consistent with the formulas they are compared to."""

import numpy as np

from hessian_lib.experiments import theory
from hessian_lib.laws import rmt


def test_wigner_table_matches_the_formula_and_reproduces():
    table = theory.wigner_outlier_table(400, [1, 64], s1=4.0, n_data=None, repeats=2, seed=5)
    again = theory.wigner_outlier_table(400, [1, 64], s1=4.0, n_data=None, repeats=2, seed=5)
    assert table.equals(again)
    assert list(table["B"]) == [1, 64]
    np.testing.assert_allclose(table["s(B)"], [4.0, 0.5])
    np.testing.assert_allclose(table["top predicted"], [8.0, 1.25])
    np.testing.assert_allclose(table["bottom predicted"], [-8.0, -1.25])
    # finite P = 400: edge fluctuations ~ P^(-2/3), outlier ~ P^(-1/2); 6% covers both comfortably
    assert table["top rel. error"].max() < 0.06 and table["bottom rel. error"].max() < 0.06


def test_bbp_sweep_crosses_the_threshold():
    sweep = theory.bbp_sweep(400, [0.3, 3.0], theta=1.0, repeats=2, seed=1)
    below, above = sweep.iloc[0], sweep.iloc[1]
    assert below["top predicted"] > below["edge 2s"]          # outlier outside the bulk
    assert above["top predicted"] == above["edge 2s"]         # stuck to the edge
    assert abs(below["top measured"] - (1 + 0.3**2)) < 0.05
    assert abs(above["top measured"] - 6.0) / 6.0 < 0.05


def test_mp_table_flags_separation():
    table = theory.mp_outlier_table(300, [10, 3000], spike=5.0, repeats=2, seed=2)
    assert list(table["separated"]) == [False, True]          # 1 + sqrt(30) > 5 > 1 + sqrt(0.1)
    np.testing.assert_allclose(table["top predicted"], [rmt.mp_spiked_top(5.0, 30.0), rmt.mp_spiked_top(5.0, 0.1)])
    assert table["top rel. error"].max() < 0.1


def test_child_seeds_are_distinct_and_stable():
    seeds = {theory.child_seed(0, i, r) for i in range(5) for r in range(5)}
    assert len(seeds) == 25
    assert theory.child_seed(3, 1, 2) == theory.child_seed(3, 1, 2)


def test_simulations_are_kept_in_the_store_and_loaded_unchanged(tmp_path):
    import pandas as pd

    from hessian_lib.store import ResultsStore

    plain = theory.mp_outlier_table(40, [8, 80], repeats=2, seed=3)
    first = theory.mp_outlier_table(40, [8, 80], repeats=2, seed=3, store=tmp_path)
    assert len(list(ResultsStore(tmp_path).entries())) == 1
    again = theory.mp_outlier_table(40, [8, 80], repeats=2, seed=3, store=tmp_path)
    pd.testing.assert_frame_equal(plain, first)
    pd.testing.assert_frame_equal(first, again)  # column order, dtypes and NaN included
    sample = theory.explorer_sample(4, 1.0, 30, 4.0, n_data=100, store=tmp_path)
    assert np.array_equal(sample["wigner_eigenvalues"],
                          theory.explorer_sample(4, 1.0, 30, 4.0, n_data=100)["wigner_eigenvalues"])
    assert len(list(ResultsStore(tmp_path).entries())) == 2
    theory.mp_outlier_table(40, [8, 80], repeats=2, seed=4, store=tmp_path)  # another seed: another entry
    assert len(list(ResultsStore(tmp_path).entries())) == 3
