"""The measuring planner: bounded, persisted, switchable, skipped where it cannot run, correct.

The default suite runs with measuring off (tests/conftest.py); these tests turn it on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hmfusion import HMConcatFusion, planner
from hmfusion.ops import planner as ops_planner
from hmfusion.ops import tuning
from hmfusion.ops import wisdom as wisdom_store
from hmfusion.structures import KroneckerStructure

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def wisdom(tmp_path, monkeypatch):
    """A fresh wisdom folder, nothing in memory, no plans cached, measuring on."""
    monkeypatch.setenv("HMFUSION_WISDOM_DIR", str(tmp_path))
    monkeypatch.setattr(wisdom_store, "_wisdom", {})
    monkeypatch.setattr(ops_planner, "_CACHE", {})
    monkeypatch.setattr(tuning, "_enabled", True)
    return tmp_path


def _never_measure(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(tuning, "_measure", fail)


def _spec(n, D, p, q, **kwargs):
    return KroneckerStructure.create(n, D, p, q, **kwargs).spec


# a key the cost model prices above MIN_MEASURED_MACS whose calls take a few ms
SHAPE = (_spec(256, 256, 4, 4), 256, (64,) * 4)


def _key(spec, m, dims, dtype=torch.float32, grad=True):
    return tuning.PlanKey(spec, m, dims, dtype, "cpu", grad)


def test_a_measured_plan_is_a_candidate_and_matches_the_reference(wisdom, caplog):
    # float64 (so that the reference comparison is tight), unaligned and padded inputs
    module = HMConcatFusion([100, 156], n=250, p=5, q=4, dtype=torch.float64, pad=True)
    xs = [torch.randn(256, d, dtype=torch.float64, requires_grad=True) for d in (100, 156)]
    with caplog.at_level(logging.INFO, logger="hmfusion.ops.tuning"):
        y = module(xs)
    plan = module.plan(256)
    assert plan.reason.startswith("measured on this machine"), plan
    assert "measured" in caplog.text and "picked" in caplog.text
    spec, dims = module.structure.spec, (100, 156)
    key = _key(spec, 256, dims, torch.float64)
    pick = ops_planner._choose(spec, 256, dims, torch.float64, "cpu", True)
    options = [option._replace(reason="") for option, _ in ops_planner._options(pick, key)]
    assert plan._replace(reason="") in options
    dy = torch.randn_like(y)
    leaves = [*xs, module.A, module.B]
    grads = torch.autograd.grad(y, leaves, dy)
    weight = torch.kron(module.A, module.B)[:250, :256]
    y_ref = torch.cat(xs, -1) @ weight.T
    grads_ref = torch.autograd.grad(y_ref, leaves, dy)
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        assert ((got - want).norm() / want.norm()).item() < 1e-10


def test_measuring_leaves_the_user_s_rng_and_parameters_alone(wisdom):
    module = HMConcatFusion([64] * 4, n=256, p=4)
    state = torch.get_rng_state()
    plan = module.plan(256)  # measures
    assert plan.reason.startswith("measured")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(param.grad is None for param in module.parameters())


def test_measuring_a_new_key_keeps_to_the_stated_bound(wisdom, monkeypatch):
    seen: dict = {"calls": 0, "longest": 0.0}
    real_time = tuning._time

    def counting(step):
        def call():
            begin = time.perf_counter()
            step()
            seen["longest"] = max(seen["longest"], time.perf_counter() - begin)
            seen["calls"] += 1

        return call

    def timed(steps, device_type):
        begin = time.perf_counter()
        result = real_time([counting(step) for step in steps], device_type)
        seen["elapsed"], seen["steps"], seen["reported"] = (
            time.perf_counter() - begin,
            len(steps),
            result[1],
        )
        return result

    monkeypatch.setattr(tuning, "_time", timed)
    monkeypatch.setattr(tuning, "BUDGET_SECONDS", 0.05)
    ops_planner.choose_plan(*SHAPE)
    assert 2 <= seen["steps"] <= tuning.MAX_CANDIDATES
    most = tuning.WARMUP_CALLS + tuning.REPEATS * tuning.MAX_CALLS_PER_SAMPLE
    assert seen["calls"] == seen["reported"] <= tuning.MAX_CANDIDATES * most
    # the untimed round, the budget, one sample that started before it ran out (+ Python's own)
    sample = max(tuning.SAMPLE_SECONDS, seen["longest"]) + seen["longest"]
    untimed = tuning.WARMUP_CALLS * seen["steps"] * seen["longest"]
    bound = tuning.BUDGET_SECONDS + untimed + sample + 0.05
    assert seen["elapsed"] <= bound, seen
    # with no budget only the untimed round runs
    monkeypatch.setattr(tuning, "BUDGET_SECONDS", 0.0)
    ops_planner.choose_plan(SHAPE[0], SHAPE[1] + 1, SHAPE[2])
    assert seen["reported"] == tuning.WARMUP_CALLS * seen["steps"]


def test_keys_priced_below_the_threshold_are_not_measured_but_tune_measures_them(
    wisdom, monkeypatch
):
    module = HMConcatFusion([64, 64], n=64, p=8)
    spec, dims = module.structure.spec, (64, 64)
    estimate = ops_planner.candidate_plans(spec, 8, dims)[0][1]  # the pick's
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 1.01 * estimate)
    with monkeypatch.context() as patch:
        _never_measure(patch)
        assert not module.plan(8).reason.startswith("measured")
    monkeypatch.setattr(ops_planner, "_CACHE", {})
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 0.99 * estimate)
    assert module.plan(8).reason.startswith("measured")
    # tune measures whatever the estimate
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", float("inf"))
    plans = planner.tune(module, [torch.randn(5, 64), torch.randn(5, 64)])
    assert len(plans) == 1 and plans[0].reason.startswith("measured")
    assert module.plan(5) == plans[0]
    assert planner.wisdom_path().exists()


def test_the_off_switch_gives_the_cost_model_s_plan(wisdom, monkeypatch):
    _never_measure(monkeypatch)
    spec, m, dims = SHAPE
    expected = ops_planner._choose(spec, m, dims, torch.float32, "cpu", True)
    with planner.measuring(False):
        assert ops_planner.choose_plan(*SHAPE) == expected
    monkeypatch.setattr(ops_planner, "_CACHE", {})
    monkeypatch.setattr(tuning, "_enabled", None)
    monkeypatch.setenv("HMFUSION_TUNE", "0")
    assert ops_planner.choose_plan(*SHAPE) == expected
    with pytest.raises(TypeError, match="must be a bool"):
        planner.set_measuring("off")  # type: ignore[arg-type]


def test_no_measuring_under_deterministic_algorithms_or_a_dispatch_mode(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 0.0)
    _never_measure(monkeypatch)
    with FlopCounterMode(display=False):
        ops_planner.choose_plan(*SHAPE)
    monkeypatch.setattr(ops_planner, "_CACHE", {})
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ops_planner.choose_plan(*SHAPE)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_no_measuring_while_torch_compile_traces(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 0.0)  # (every key would be measured)
    module = HMConcatFusion([64] * 4, n=256, p=4)
    xs = [torch.randn(256, 64) for _ in range(4)]
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    with monkeypatch.context() as patch, torch.no_grad():
        _never_measure(patch)
        y = compiled(xs)
    torch.testing.assert_close(y, torch.cat(xs, -1) @ torch.kron(module.A, module.B).T.detach())
    # outside the trace the same key is measured
    assert module.plan(256, requires_grad=False).reason.startswith("measured")


def test_no_measuring_inside_torch_func(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 0.0)
    _never_measure(monkeypatch)
    module = HMConcatFusion([64] * 4, n=256, p=4)
    xs = [torch.randn(256, 64) for _ in range(4)]
    params = dict(module.named_parameters())
    grads = torch.func.grad(lambda p: torch.func.functional_call(module, p, (xs,)).sum())(params)
    assert set(grads) == set(params)


def test_corrupt_wisdom_is_ignored_with_a_warning(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", float("inf"))  # (read wisdom, measure nothing)
    path = planner.wisdom_path()
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="ignoring wisdom file"):
        plan = ops_planner.choose_plan(*SHAPE)
    assert not plan.reason.startswith("measured")
    with pytest.warns(UserWarning, match="ignoring wisdom file"):
        assert planner.import_wisdom(path) == 0
    with pytest.raises(FileNotFoundError):
        planner.import_wisdom(wisdom / "missing.json")


def _wisdom_file(path: Path, fingerprint: dict, key: tuning.PlanKey, plan) -> None:
    entry = {k: v for k, v in plan._asdict().items() if k != "reason"}
    entry["measured"] = "written by the test"
    path.write_text(json.dumps({"format": 1, "fingerprint": fingerprint,
                                "plans": {key.text(): entry}}))  # fmt: skip


def test_wisdom_is_used_only_for_its_own_fingerprint(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", float("inf"))
    spec, m, dims = SHAPE
    key = _key(spec, m, dims)
    pick = ops_planner._choose(spec, m, dims, torch.float32, "cpu", True)
    other = next(p for p, _ in ops_planner._options(pick, key) if p.method != pick.method)
    foreign = {**planner.fingerprint(), "threads": torch.get_num_threads() + 1}
    _wisdom_file(planner.wisdom_path(), foreign, key, other)
    with pytest.warns(UserWarning, match="another machine"):
        assert ops_planner.choose_plan(*SHAPE).method == pick.method
    # the same plan written for this machine is used, and import_wisdom takes it too
    monkeypatch.setattr(wisdom_store, "_wisdom", {})
    monkeypatch.setattr(ops_planner, "_CACHE", {})
    _wisdom_file(planner.wisdom_path(), planner.fingerprint(), key, other)
    plan = ops_planner.choose_plan(*SHAPE)
    assert plan._replace(reason="") == other._replace(reason="")
    assert "written by the test" in plan.reason
    exported = wisdom / "exported.json"
    assert planner.export_wisdom(exported) == 1
    monkeypatch.setattr(wisdom_store, "_wisdom", {})
    planner.wisdom_path().unlink()
    assert planner.import_wisdom(exported) == 1
    assert planner.wisdom_path().exists()


SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from hmfusion import HMConcatFusion
    from hmfusion.ops import tuning, wisdom as wisdom_store
    if sys.argv[1] == "recall":
        def fail(*args, **kwargs):
            sys.exit("measured a known key")
        tuning._measure = fail
    module = HMConcatFusion([64] * 4, n=256, p=4)
    plan = module.plan(256)
    print(json.dumps(plan._asdict()))
    """
)


def test_a_second_process_plans_a_known_key_without_measuring(tmp_path):
    env = {**os.environ, "HMFUSION_TUNE": "1", "HMFUSION_WISDOM_DIR": str(tmp_path)}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    runs = []
    for role in ("measure", "recall"):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, role], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["reason"].startswith("measured on this machine")
    assert {k: v for k, v in first.items()} == second
    assert len(list(tmp_path.glob("wisdom-*.json"))) == 1


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys, torch
    import torch.distributed as dist
    from hmfusion import HMConcatFusion
    from hmfusion.ops import tuning, wisdom as wisdom_store
    rank, rendezvous = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    from hmfusion import planner
    def fail(*args, **kwargs):
        sys.exit(f"rank {rank} measured")
    if rank == 1:
        tuning._measure = fail
    module = HMConcatFusion([64] * 4, n=256, p=4)
    planner.tune(module, [torch.randn(256, 64) for _ in range(4)])  # every rank alike
    plan = module.plan(256)
    # a key met after tune(), and by each rank on its own (evaluation shards of unequal size):
    # the cost model's plan, no measuring, no collective that the other rank never joins
    tuning._measure = fail
    other = module.plan(4096 if rank == 0 else 4093)
    print(json.dumps([plan._asdict(), other.reason]))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_every_rank_runs_rank_0_s_plan(tmp_path):
    # (and, found in review: a key met by one rank alone never waits on a broadcast)
    env = {**os.environ, "HMFUSION_TUNE": "1"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    children = []
    for rank in (0, 1):
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        child_env = {**env, "HMFUSION_WISDOM_DIR": str(folder)}  # (each rank its own wisdom)
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", DISTRIBUTED, str(rank), str(tmp_path / "rendezvous")],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    (plan_0, other_0), (plan_1, other_1) = results
    assert plan_0 == plan_1 and plan_0["reason"].startswith("measured")
    assert not other_0.startswith("measured") and not other_1.startswith("measured")


def test_measuring_under_inference_mode_times_the_forward(wisdom, monkeypatch):
    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", 0.0)  # (a forward-only key: cheaper)
    module = HMConcatFusion([64] * 4, n=256, p=4)
    xs = [torch.randn(256, 64) for _ in range(4)]
    with torch.inference_mode():
        y = module(xs)
    assert module.plan(256, requires_grad=False).reason.startswith("measured")
    torch.testing.assert_close(y, torch.cat(xs, -1) @ torch.kron(module.A, module.B).T.detach())


def test_wisdom_that_cannot_be_saved_is_a_warning_not_an_error(wisdom, monkeypatch):
    blocker = wisdom / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HMFUSION_WISDOM_DIR", str(blocker / "wisdom"))  # (under a file)
    with pytest.warns(UserWarning, match="could not save wisdom"):
        plan = ops_planner.choose_plan(*SHAPE)
    assert plan.reason.startswith("measured")


# found in review -------------------------------------------------------------------------------
def test_a_remembered_plan_that_is_no_candidate_any_more_is_measured_afresh(wisdom, monkeypatch):
    # a wisdom entry naming a plan the planner no longer offers (its chunk rows changed with
    # the code, say) used to switch measuring off for that key for good
    spec, m, dims = SHAPE
    key = _key(spec, m, dims)
    pick = ops_planner._choose(spec, m, dims, torch.float32, "cpu", True)
    stale = pick._replace(chunk_rows=pick.chunk_rows + 1)
    _wisdom_file(planner.wisdom_path(), planner.fingerprint(), key, stale)
    plan = ops_planner.choose_plan(*SHAPE)
    assert plan.reason.startswith("measured on this machine") and plan != stale
    stored = json.loads(planner.wisdom_path().read_text())["plans"][key.text()]
    assert stored["chunk_rows"] == plan.chunk_rows and stored["measured"] != "written by the test"


def test_the_code_is_part_of_the_fingerprint():
    # wisdom measured with other kernels or another cost model does not count
    found = planner.fingerprint()
    assert len(found["code"]) == 16 and found["code"] == planner.fingerprint()["code"]


def test_a_plan_is_chosen_per_thread_count(wisdom, monkeypatch):
    # the row chunks (and measured plans) depend on the threads: a plan chosen at 2 threads
    # is not reused after torch.set_num_threads(1)
    monkeypatch.setattr(tuning, "_enabled", False)
    threads = torch.get_num_threads()
    seen = []
    real = ops_planner._choose

    def counting(*args):
        seen.append(torch.get_num_threads())
        return real(*args)

    monkeypatch.setattr(ops_planner, "_choose", counting)
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            ops_planner.choose_plan(*SHAPE)
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]


def test_tune_in_one_thread_neither_widens_nor_collects_another_s_plans(wisdom, monkeypatch):
    import threading

    monkeypatch.setattr(tuning, "MIN_MEASURED_MACS", float("inf"))  # (only tune() measures)
    inside = threading.Event()
    release = threading.Event()
    other_plans = []

    class Waiting(torch.nn.Module):
        def forward(self, x):
            inside.set()
            release.wait(30)
            return x

    tuner = threading.Thread(target=lambda: planner.tune(Waiting(), torch.zeros(1)))
    tuner.start()
    assert inside.wait(30)
    try:  # while the other thread is inside tune(): this thread's keys are not measured
        other_plans.append(ops_planner.choose_plan(*SHAPE))
    finally:
        release.set()
        tuner.join(30)
    assert not other_plans[0].reason.startswith("measured")


def test_wisdom_is_merged_under_a_lock_so_concurrent_writers_keep_each_others_plans(wisdom):
    # Review: remember() read, merged and replaced the file without a lock: a process that wrote
    # between another's read and its rename lost its plans. The write now waits for the lock.
    import threading

    from hmfusion.ops import files

    path = wisdom_store.wisdom_path("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    handle = files.lock_file(lock)  # another process merging its plans right now
    writer = threading.Thread(target=wisdom_store.remember, args=("cpu", "mine", {"plan": "a"}))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and not path.exists()  # waits instead of writing over it
    found = wisdom_store.fingerprint("cpu")
    wisdom_store._write(path, found, {"theirs": {"plan": "b"}})  # the other process's plans
    files.unlock_file(lock, handle)
    writer.join(10)
    assert not writer.is_alive()
    on_disk = json.loads(path.read_text())["plans"]
    assert on_disk == {"theirs": {"plan": "b"}, "mine": {"plan": "a"}}
    assert not lock.exists()


def test_wisdom_whose_lock_stays_held_is_a_warning_not_an_error(wisdom, monkeypatch):
    from hmfusion.ops import files

    monkeypatch.setattr(wisdom_store, "_LOCK_WAIT_S", 0.05)
    path = wisdom_store.wisdom_path("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.held(path.with_name(path.name + ".lock")):
        with pytest.warns(UserWarning, match="could not save wisdom.*held by pid"):
            wisdom_store.remember("cpu", "mine", {"plan": "a"})
    assert wisdom_store.known("cpu")[0]["mine"] == {"plan": "a"}  # kept in this process
