"""The plan, sharded runs into one store, claims, and rendering from a store (smoke profile, tiny jobs).

The multi-process tests run the mixture chapter's perceptron jobs (seconds each, no images):
they exercise dependencies across shards (the sweep's perceptron at the study's own separation
is the study's perceptron) without training a convolutional network.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hessian_lib import book
from hessian_lib.claims import Claim
from hessian_lib.cli import build_parser
from hessian_lib.experiments import mixture_analysis as MA
from hessian_lib.plan import build_plan, plan_rows
from hessian_lib.profiles import load_profile
from hessian_lib.provenance import write_about_page
from hessian_lib.shard import ShardError, parse_shard, run_shard, shard_from_env, shard_jobs
from hessian_lib.store import READ_LOG_ENV, ResultsStore

OVERRIDES = {"networks.count": "1"}
PROFILE = load_profile("smoke", OVERRIDES)
CHAPTER = ["05_mixture"]


def perceptron_keys() -> list[str]:
    return [j.key for j in build_plan(PROFILE, chapters=CHAPTER) if "perceptron" in j.name]


def same_results(a: dict, b: dict) -> bool:
    """Equal but for wall times, and floats to 1e-12 (eigensolvers differ in the last bits between thread counts)."""
    if set(a) != set(b):
        return False
    for name, value in a.items():
        if "seconds" in name:
            continue
        if isinstance(value, (np.ndarray, float)):
            if not np.allclose(value, b[name], rtol=1e-12, atol=1e-12, equal_nan=True):
                return False
        elif value != b[name]:
            return False
    return True


def run_cli(store: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hessian_lib", "run", "--profile", "smoke", "--set", "networks.count=1",
           "--device", "cpu", "--results", str(store), "--poll", "0.2", "--wait", "60",
           *(a for k in perceptron_keys() for a in ("--key", k)), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def computed(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("computed ")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> ResultsStore:
    """A store the mixture chapter's own function filled (natural networks stubbed: they need CIFAR-100 and a
    convolutional network)."""
    def natural(profile, network_seed, **kwargs):
        return {"stub": network_seed}

    store = ResultsStore(tmp_path_factory.mktemp("reference"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MA, "natural_network", natural)
        MA.run_mixture(PROFILE, store=store, device="cpu")
    return store


def assert_same_store(store: ResultsStore, reference: ResultsStore) -> None:
    """``store`` holds every perceptron job, each result as in ``reference``."""
    keys = {k for k, _ in store.entries()}
    assert set(perceptron_keys()) <= keys
    for key, config in store.entries():
        assert same_results(store.load(config), reference.load(config)), key


def test_plan_is_what_the_chapter_writes(reference):
    """The mixture chapter's own function writes exactly the plan's stage records."""
    stages = {k for k, c in reference.entries() if c["experiment"] == "stage"}
    plan = build_plan(PROFILE, chapters=CHAPTER)
    assert {j.key for j in plan} == stages
    assert len(plan) == PROFILE.networks.count * (2 + len(PROFILE.mixture.separations))
    rows = plan_rows(plan, PROFILE, reference)
    assert all(r["stored"] for r in rows) and all(r["seconds"] >= 0 for r in rows)
    # every dependency is an earlier job of the plan
    seen: set[str] = set()
    for job in build_plan(PROFILE):
        assert set(job.deps) <= seen, job.name
        seen.add(job.key)


def test_every_chapter_is_planned_and_shards_partition_the_plan():
    jobs = build_plan(PROFILE)
    assert {j.chapter for j in jobs} == {"01_theory", "02_spectra", "03_scaling", "04_learner", "05_mixture"}
    assert len({j.key for j in jobs}) == len(jobs)
    parts = [shard_jobs(jobs, k, 3) for k in range(3)]
    assert sorted(j.key for part in parts for j in part) == sorted(j.key for j in jobs)
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(ValueError, match="k/n"):
        parse_shard("3/3")
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}) \
        == (4, 8)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert shard_from_env({}) is None


def run_theory_cells(store: Path) -> None:
    """Execute the Theory chapter's code cells in this process (smoke profile, ``store`` as its results folder)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = json.loads((book.project_root() / "book" / "01_theory.ipynb").read_text())["cells"]
    namespace = {"profile": "smoke", "overrides": {}, "seed": 0, "data_root": None, "device": "cpu",
                 "results_dir": str(store), "build_id": "test", "live_widgets": False}
    for cell in cells:
        if cell["cell_type"] == "code" and "parameters" not in cell["metadata"].get("tags", []):
            exec(compile("".join(cell["source"]), "01_theory", "exec"), namespace)  # noqa: S102
            plt.close("all")


def test_the_plan_holds_the_theory_chapters_simulations_and_the_chapter_reads_them(tmp_path, monkeypatch):
    """``run`` computes the plan's Theory jobs; the chapter, executed on that store, reads them and computes
    nothing (it adds only its verdict record), and reads every one of them."""
    T = PROFILE.theory
    jobs = build_plan("smoke", chapters=["book/01_theory.ipynb"])
    frames = len(T.widget_batch_sizes) * len(T.widget_spike) * len(T.widget_dim) * len(T.widget_noise)
    assert {j.chapter for j in jobs} == {"01_theory"} and len({j.key for j in jobs}) == len(jobs) == 3 + 3 + frames
    assert all(j.work > 0 and not j.deps for j in jobs)
    report = run_shard("smoke", results=tmp_path, chapters=["01_theory"], device="cpu", log=lambda _: None)
    assert sorted(report.computed) == sorted(j.key for j in jobs)
    store = ResultsStore(tmp_path)
    before = {k for k, _ in store.entries()}
    assert before == {j.key for j in jobs}
    read_log = tmp_path / "reads.log"
    monkeypatch.setenv(READ_LOG_ENV, str(read_log))
    run_theory_cells(tmp_path)
    after = {k: c for k, c in store.entries()}
    assert {c["experiment"] for k, c in after.items() if k not in before} == {"verdict"}
    assert {Path(line).name for line in read_log.read_text().split()} >= before


def test_three_shards_in_three_processes_equal_the_chapters_run(tmp_path, reference):
    procs = [run_cli(tmp_path, "--shard", f"{k}/3") for k in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sorted(k for out in outputs for k in computed(out)) == sorted(perceptron_keys())
    assert_same_store(ResultsStore(tmp_path), reference)


def test_a_killed_shard_restarted_twice_at_once_loses_nothing_and_duplicates_nothing(tmp_path, reference):
    proc = run_cli(tmp_path)
    claims = tmp_path / ".claims"
    deadline = time.monotonic() + 60
    while not list(claims.glob("*.claim")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    left = list(claims.glob("*.claim"))
    assert left, "the shard was killed while holding a claim"
    stored = {k for k, _ in ResultsStore(tmp_path).entries()}
    procs = [run_cli(tmp_path, "--shard", "0/1") for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    first, second = (computed(out) for out in outputs)
    assert not set(first) & set(second)  # no result computed twice
    assert sorted(first + second) == sorted(set(perceptron_keys()) - stored)
    assert left[0].stem in first + second  # the dead shard's claim was taken over
    assert not list(claims.glob("*.claim"))
    assert_same_store(ResultsStore(tmp_path), reference)


def test_claim_of_a_silent_host_goes_stale(tmp_path):
    holder = Claim(tmp_path, "k")
    holder.path.parent.mkdir(parents=True)
    holder.path.write_text('{"host": "another-host", "pid": 1, "token": "x"}')
    assert not Claim(tmp_path, "k", stale_after=60).acquire()  # fresh: another host's live claim
    old = time.time() - 120
    os.utime(holder.path, (old, old))
    with Claim(tmp_path, "k", stale_after=60) as claim:
        assert claim.held
    assert not holder.path.exists()


def test_a_shard_waiting_for_inputs_says_so(tmp_path):
    dependent = [j.key for j in build_plan(PROFILE, chapters=CHAPTER) if j.deps]
    with pytest.raises(ShardError, match="waits for perceptron"):
        run_shard("smoke", overrides=OVERRIDES, results=tmp_path, chapters=CHAPTER, keys=dependent[:1], wait=0, poll=0,
                  log=lambda _: None)


@pytest.mark.parametrize("chapter", ["01_theory", "05_mixture"])
def test_book_from_results_fails_at_once_on_a_missing_result(tmp_path, monkeypatch, chapter):
    store = ResultsStore(tmp_path / "results")
    plan = build_plan(PROFILE)
    for job in plan:
        store.save(job.config, {"stub": True})
    missing = next(j for j in plan if j.chapter == chapter)

    def execute(*args, **kwargs):
        raise AssertionError("a chapter ran")

    monkeypatch.setattr(book, "execute_chapter", execute)
    chapters = book.list_chapters()
    book._check_stored(PROFILE, OVERRIDES, 0, chapters, store.root)  # complete: no error
    store.delete(missing.config)
    with pytest.raises(book.BookError) as err:
        book.run_book("smoke", overrides=OVERRIDES, results_dir=store.root, build_dir=tmp_path / "build",
                      build=False, device="cpu")
    message = str(err.value)
    assert missing.key in message and missing.name in message
    assert f"python -m hessian_lib run --profile smoke --set networks.count=1 --results {store.root}" in message


@pytest.mark.parametrize("command", ["plan", "run", "book"])
def test_help_is_plain_text_with_an_example(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    text = sub.format_help()
    assert "Examples:" in text and f"python -m hessian_lib {command}" in text
    assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_results_record_where_they_were_computed_and_the_about_page_lists_them(tmp_path):
    store = ResultsStore(tmp_path / "results")
    job = build_plan(PROFILE, chapters=CHAPTER)[0]
    store.save(job.config, {"x": 1.0})
    where = store.provenance(job.config)
    assert where["host"] == socket.gethostname() and where["device"].startswith("CPU") and where["saved"][:2] == "20"
    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "data").mkdir()
    (staging / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_theory\n")
    rows = [{"chapter": job.chapter, "experiment": job.name, "key": job.key, **where},
            {"chapter": "05_mixture", "experiment": "not yet", "key": "0" * 16}]
    page = write_about_page(staging, "book/about", root=tmp_path, profile=PROFILE, overrides=OVERRIDES, seed=0,
                            device="cpu", data_root=tmp_path / "data", build_id="b", timings={}, rerun=set(),
                            results=rows).read_text().replace("\\_", "_")
    assert "Where the results were computed" in page
    assert f"| {job.key} | {where['host']} | {where['device']} | {where['saved']} |" in page
    assert f"| {'0' * 16} | - | - | - |" in page
