"""hmfusion.compat.tinybig as a drop-in for the whole tinybig.fusion 0.2.1 namespace.

Against data recorded from tinybig 0.2.1 in float64 (tests/data/tinybig-0.2.1-namespace.json,
written by tests/data/record_tinybig.py): the outputs of the 13 parameter-free classes, the
configs tinybig's to_config() returns, a tinybig-style head trained 5 steps, and what tinybig
does with processing strings. Then parameters, processing attributes, randomness and the base
class helpers, with references written here in float64.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from hmfusion.compat import tinybig as fusion

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "tinybig-0.2.1-namespace.json").read_text())
TOL = {"atol": 1e-12, "rtol": 0.0}

TINYBIG_FUSION_NAMESPACE = [  # dir(tinybig.fusion) 0.2.1, minus its submodule basic_fusion
    "average_fusion",
    "concatenation_fusion",
    "dual_lphm_parameterized_concatenation_fusion",
    "fusion",
    "hm_parameterized_concatenation_fusion",
    "lowrank_parameterized_concatenation_fusion",
    "lphm_parameterized_concatenation_fusion",
    "max_fusion",
    "mean_fusion",
    "median_fusion",
    "metric_fusion",
    "min_fusion",
    "parameterized_concatenation_fusion",
    "parameterized_weighted_summation_fusion",
    "prod_fusion",
    "random_matrix_adaption_parameterized_concatenation_fusion",
    "sum_fusion",
    "summation_fusion",
    "weighted_summation_fusion",
]
SIX = fusion.config.PARAMETERIZED_CLASSES


def t64(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def six_instances(**common):
    kwargs = dict(n=4, dims=[2, 6], **common)
    return [
        fusion.parameterized_concatenation_fusion(**kwargs),
        fusion.lowrank_parameterized_concatenation_fusion(r=2, **kwargs),
        fusion.hm_parameterized_concatenation_fusion(p=2, q=4, **kwargs),
        fusion.lphm_parameterized_concatenation_fusion(r=1, p=2, q=4, **kwargs),
        fusion.dual_lphm_parameterized_concatenation_fusion(r=1, p=2, q=4, **kwargs),
        fusion.random_matrix_adaption_parameterized_concatenation_fusion(r=2, **kwargs),
    ]


# the namespace and its recorded outputs --------------------------------------------------------
def test_every_name_of_tinybig_fusion_is_here():
    for name in TINYBIG_FUSION_NAMESPACE:
        assert name in fusion.__all__ and isinstance(getattr(fusion, name), type), name
        assert issubclass(getattr(fusion, name), fusion.fusion)
        assert getattr(fusion, name).__doc__, name


@pytest.mark.parametrize(
    "case", RECORDED["outputs"], ids=lambda c: f"{c['class']}{c['kwargs']['dims']}"
)
def test_parameter_free_fusions_reproduce_tinybig(case):
    kwargs = dict(case["kwargs"])
    if "weights" in kwargs:
        kwargs["weights"] = t64(kwargs["weights"])
    f = getattr(fusion, case["class"])(**kwargs)
    xs = [t64(x) for x in case["x"]]
    w = None if case["w"] is None else t64(case["w"])
    assert f.calculate_n() == case["n"] and f.calculate_l() == case["l"]
    torch.testing.assert_close(f(x=xs, w=w), t64(case["output"]), **TOL)


def test_parameter_free_fusions_against_plain_formulas():
    xs = [torch.randn(3, 4, dtype=torch.float64) for _ in range(4)]
    stacked = torch.stack(xs)
    expected = {
        "sum_fusion": stacked.sum(0),
        "summation_fusion": stacked.sum(0),
        "mean_fusion": stacked.mean(0),
        "average_fusion": stacked.mean(0),
        "max_fusion": stacked.amax(0),
        "min_fusion": stacked.amin(0),
        "prod_fusion": stacked.prod(0),
        "median_fusion": stacked.sort(0).values[1],  # the lower of the two middle values
        "l1_norm_fusion": stacked.abs().sum(0),
        "l2_norm_fusion": stacked.square().sum(0).sqrt(),
        "concatenation_fusion": torch.cat(xs, -1),
    }
    for name, reference in expected.items():
        torch.testing.assert_close(getattr(fusion, name)(dims=[4] * 4)(xs), reference, **TOL)
    weights = t64([0.5, -1.0, 2.0, 0.25])
    f = fusion.weighted_summation_fusion(dims=[4] * 4, weights=weights)
    torch.testing.assert_close(f(xs), sum(a * x for a, x in zip(weights, xs)), **TOL)
    f = fusion.parameterized_weighted_summation_fusion(dims=[4] * 4)
    assert f.calculate_l() == 4
    torch.testing.assert_close(f(xs, w=weights[None]), sum(a * x for a, x in zip(weights, xs)))


def test_fixed_weights_follow_the_inputs_device():
    for f in [
        fusion.summation_fusion(dims=[2, 2]),
        fusion.average_fusion(dims=[2, 2]),
        fusion.weighted_summation_fusion(dims=[2, 2], weights=[1.0, 2.0]),
    ]:
        y = f([torch.ones(3, 2, device="meta"), torch.ones(3, 2, device="meta")])
        assert y.device.type == "meta" and y.shape == (3, 2)


def test_parameter_free_fusions_raise_clear_errors():
    with pytest.raises(ValueError, match="expected 3 inputs"):
        fusion.weighted_summation_fusion(dims=[2] * 3, weights=[1.0] * 3)([torch.ones(1, 2)] * 2)
    with pytest.raises(ValueError, match="w is required"):
        fusion.parameterized_weighted_summation_fusion(dims=[2, 2])([torch.ones(1, 2)] * 2)
    with pytest.raises(ValueError, match="weights is required"):
        fusion.weighted_summation_fusion(dims=[2, 2])([torch.ones(1, 2)] * 2)
    with pytest.raises(ValueError, match="must share their shape"):
        fusion.max_fusion(dims=None)([torch.ones(1, 2), torch.ones(2, 2)])
    with pytest.raises(ValueError, match="same width"):
        fusion.mean_fusion(dims=[2, 3]).calculate_n()
    with pytest.raises(ValueError, match="not one of"):
        fusion.metric_fusion(dims=[2], metric="os.system")
    with pytest.raises(ValueError, match="cannot be empty"):
        fusion.concatenation_fusion(dims=[2])([])


# parameters like tinybig's ---------------------------------------------------------------------
def test_with_external_w_a_fusion_owns_nothing():
    for f in six_instances():
        assert list(f.parameters()) == [], type(f).__name__
        expected = {"R1", "R2"} if "random" in type(f).__name__ else set()
        assert set(f.state_dict()) == expected
        assert f.fusion is None
        with pytest.raises(ValueError, match="w is required.*own_parameters=True"):
            f([torch.randn(3, 2), torch.randn(3, 6)])


def test_own_parameters_on_request_and_gradients_into_w():
    for external, own in zip(
        six_instances(dtype=torch.float64), six_instances(dtype=torch.float64, own_parameters=True)
    ):
        assert own.fusion is not None and len(list(own.parameters())) > 0
        if "random" in type(own).__name__:
            external.set_random_matrices(own.fusion.R1, own.fusion.R2)
        xs = [torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)]
        w = own.fusion.flat_parameters().detach().requires_grad_()
        torch.testing.assert_close(external(xs, w=w), own(xs), **TOL)
        external(xs, w=w).sum().backward()
        assert w.grad is not None and w.grad.abs().sum() > 0


class Head(nn.Module):
    """The recorder's tinybig-style head: it owns the flat vector w of its fusion."""

    def __init__(self, fusion_module):
        super().__init__()
        self.linear = nn.Linear(6, 6, dtype=torch.float64)
        self.channel_fusion = fusion_module
        self.w_channel_fusion = nn.Parameter(
            torch.zeros(1, fusion_module.calculate_l(), dtype=torch.float64)
        )

    def forward(self, x):
        return self.channel_fusion(
            x=[self.linear(x[0]), x[1]], w=self.w_channel_fusion, device="cpu"
        )


def _state(recorded):
    return {key: t64(value) for key, value in recorded.items()}


def test_tinybig_checkpoint_trains_and_loads_strictly_with_the_import_swapped():
    record = RECORDED["checkpoint"]
    make = getattr(fusion, record["fusion"]["class"])
    head = Head(make(**record["fusion"]["kwargs"], layout="tinybig-0.2.1"))
    # the same keys both ways: tinybig's checkpoint loads here, and ours into tinybig's head
    assert set(head.state_dict()) == set(record["state_dict"])
    head.load_state_dict(_state(record["initial_state_dict"]), strict=True)
    optimizer = torch.optim.SGD(head.parameters(), lr=record["lr"])
    train = [t64(x) for x in record["train_x"]]
    losses = []
    for _ in record["losses"]:
        optimizer.zero_grad()
        loss = (head(train) - t64(record["train_target"])).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    torch.testing.assert_close(t64(losses), t64(record["losses"]), **TOL)
    for key, value in _state(record["state_dict"]).items():
        torch.testing.assert_close(head.state_dict()[key], value, **TOL)

    reloaded = Head(make(**record["fusion"]["kwargs"], layout="tinybig-0.2.1"))
    reloaded.load_state_dict(_state(record["state_dict"]), strict=True)
    probe = [t64(x) for x in record["probe"]]
    torch.testing.assert_close(reloaded(probe), t64(record["output"]), **TOL)


def test_legacy_layout_is_a_module_of_its_own():
    f = fusion.hm_parameterized_concatenation_fusion(
        2, 3, n=4, dims=[6, 6], layout="tinybig-0.2.1", own_parameters=True
    )
    assert isinstance(f.fusion, fusion.TinybigLegacyKronecker)
    w = torch.randn(f.calculate_l(), dtype=torch.float64)
    a, b = w.split([6, 8])  # tinybig: einsum('pq,st->psqt') of the flat rows, viewed n×D
    reference = torch.einsum("pq,st->psqt", a[None], b[None]).reshape(4, 12)
    torch.testing.assert_close(f.parameter_fabrication(w), reference, **TOL)


# configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record",
    RECORDED["configs"],
    ids=lambda r: f"{r['class']}{len(r['to_config']['function_parameters'])}",
)
def test_tinybigs_to_config_output_loads(record):
    config = record["to_config"]
    assert config["function_class"].startswith("tinybig.fusion.")
    f = fusion.from_config(config)
    assert type(f).__name__ == record["class"]
    assert f.calculate_n() == record["n"] and f.calculate_l() == record["l"]
    assert f.get_dims() == config["function_parameters"]["dims"]
    # in memory, tinybig's dict holds OrderedDicts, sets and module objects: dropped as well
    parameters = dict(
        config["function_parameters"],
        _forward_hooks=OrderedDict(),
        _non_persistent_buffers_set=set(),
        _modules={"x": nn.ReLU()},
    )
    assert type(fusion.from_config(dict(config, function_parameters=parameters))) is type(f)
    assert not any(name == "tinybig" or name.startswith("tinybig.") for name in sys.modules)


def test_tinybig_config_with_processing_modules_rebuilds_them():
    record = RECORDED["configs"][1]
    f = fusion.from_config(record["to_config"])
    assert [type(m) for m in f.preprocess_functions] == [nn.ReLU]
    assert [type(m) for m in f.postprocess_functions] == [nn.LayerNorm]
    assert f.postprocess_functions[0].normalized_shape == (4,)
    assert f.get_dims() == [3, 3]  # JSON has no tuples; from Python a tuple stays a tuple
    assert fusion.parameterized_concatenation_fusion(n=4, dims=(3, 3)).get_dims() == (3, 3)


def test_unknown_keys_still_raise_next_to_tinybigs():
    config = json.loads(json.dumps(RECORDED["configs"][3]["to_config"]))
    config["function_parameters"]["bogus"] = 1
    with pytest.raises(ValueError, match=r"unknown function_parameters \['bogus'\]"):
        fusion.from_config(config)


def test_yaml_as_tinybig_users_write_it():
    text = """
function_class: tinybig.fusion.hm_parameterized_concatenation_fusion
function_parameters:
  p: 2
  q: 4
  n: 4
  dims: [4, 4]
  preprocess_function_configs:
    - function_class: torch.nn.ReLU
      device: cpu
    - function_class: torch.nn.Dropout
      function_parameters: {p: 0.1}
"""
    f = fusion.from_config(yaml.safe_load(text))
    assert isinstance(f, fusion.hm_parameterized_concatenation_fusion)
    assert [type(m) for m in f.preprocess_functions] == [nn.ReLU, nn.Dropout]
    f = fusion.from_config(
        yaml.safe_load(
            "function_class: tinybig.fusion.max_fusion\nfunction_parameters: {dims: [2, 2]}\n"
        )
    )
    assert f([torch.ones(1, 2), 2 * torch.ones(1, 2)]).tolist() == [[2.0, 2.0]]


def test_own_configs_round_trip_for_the_whole_namespace():
    for name in fusion.config.CLASSES:
        cls = getattr(fusion, name.__name__)
        kwargs = {"dims": [4, 4]}
        if cls is fusion.metric_fusion:
            kwargs["metric"] = "batch_median"
        elif cls is fusion.weighted_summation_fusion:
            kwargs["weights"] = [0.5, 0.5]
        elif "lphm" in cls.__name__:
            kwargs.update(r=1, p=2)
        elif cls.__name__.startswith("hm"):
            kwargs["p"] = 2
        f = cls(**kwargs)
        config = json.loads(json.dumps(f.to_config()))
        assert fusion.from_config(config).to_config() == config, cls.__name__


# processing functions ---------------------------------------------------------------------------
@pytest.mark.parametrize("record", RECORDED["processing_strings"], ids=lambda r: r["name"])
def test_processing_strings(record):
    x = t64(record["x"])
    ours = fusion.fusion.func_x(x, [record["name"]])
    if not record["warned"]:  # tinybig applies it: the same result
        torch.testing.assert_close(ours, t64(record["output"]), **TOL)
    else:  # tinybig 0.2.1 warns and returns x unchanged; we apply the function named
        torch.testing.assert_close(t64(record["output"]), x, **TOL)
        expected = {"torch.nn.ReLU": F.relu(x), "softmax": F.softmax(x, dim=-1)}.get(
            record["name"], F.elu(x)
        )
        torch.testing.assert_close(ours, expected, **TOL)


def test_processing_functions_are_assignable_with_tinybigs_semantics():
    f = fusion.parameterized_concatenation_fusion(n=2, dims=[2, 2], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    for value, expected in [
        ([lambda t: t + 1, "relu"], F.relu(x + 1)),
        ((torch.exp,), torch.exp(x)),
        ("torch.exp", torch.exp(x)),
        (torch.sigmoid, torch.sigmoid(x)),
        (nn.Tanh(), torch.tanh(x)),
        (None, x),
        ([], x),
    ]:
        f.preprocess_functions = value
        # tinybig's storage: a single module is an attribute torch registers, the rest a list
        single = isinstance(value, nn.Module)
        assert isinstance(f.preprocess_functions, nn.Module if single else list), value
        torch.testing.assert_close(f.pre_process(x), expected, **TOL)
    other = fusion.sum_fusion(dims=[2], preprocess_functions=["relu", "tanh"])
    f.preprocess_functions = other.preprocess_functions  # a list of two steps
    torch.testing.assert_close(f.pre_process(x), torch.tanh(F.relu(x)), **TOL)
    f.preprocess_functions = nn.ModuleList([nn.ReLU(), nn.Tanh()])  # a ModuleList: its items
    torch.testing.assert_close(f.pre_process(x), torch.tanh(F.relu(x)), **TOL)
    f.postprocess_functions = [nn.LayerNorm(2, dtype=torch.float64)]  # held, as in tinybig
    assert dict(f.named_parameters()) == {} and f.state_dict() == {}
    f.register_processing = True  # registered from now on, the same modules
    assert set(f.state_dict()) == {"postprocess_functions.0.weight", "postprocess_functions.0.bias"}
    f.postprocess_functions = [nn.LayerNorm(2, dtype=torch.float64)]
    assert "postprocess_functions.0.weight" in dict(f.named_parameters())
    with pytest.raises(ValueError, match="not an allowed processing function"):
        f.preprocess_functions = ["os.system"]
    with pytest.raises(TypeError, match="must be a callable"):
        f.postprocess_functions = [3]


@pytest.mark.parametrize("how", ["module", "config", "assigned"])
def test_in_place_preprocessing_is_refused(how):
    config = {"function_class": "torch.nn.ReLU", "function_parameters": {"inplace": True}}
    with pytest.raises(ValueError, match="inplace=True.*caller's input"):
        if how == "module":
            fusion.concatenation_fusion(dims=[2], preprocess_functions=nn.ReLU(inplace=True))
        elif how == "config":
            fusion.from_config(
                {
                    "function_class": "tinybig.fusion.sum_fusion",
                    "function_parameters": {"dims": [2], "preprocess_function_configs": config},
                }
            )
        else:
            fusion.sum_fusion(dims=[2]).preprocess_functions = [nn.Dropout(0.5, inplace=True)]


def test_processing_never_mutates_the_callers_inputs():
    for f in [
        fusion.sum_fusion(dims=[3, 3], preprocess_functions=["relu", "dropout"]),
        fusion.parameterized_concatenation_fusion(
            n=2, dims=[3, 3], preprocess_functions=[nn.ReLU()]
        ),
    ]:
        xs = [torch.randn(4, 3), torch.randn(4, 3)]
        before = [x.clone() for x in xs]
        f(xs, w=torch.randn(12) if f.calculate_l() else None)
        for x, b in zip(xs, before):
            assert torch.equal(x, b)


# the base class's API -----------------------------------------------------------------------------
def test_base_class_helpers():
    x = t64([[-1.0, 0.5]])
    torch.testing.assert_close(fusion.fusion.func_x(x, None), x)
    torch.testing.assert_close(fusion.fusion.func_x(x, "sigmoid"), torch.sigmoid(x))
    torch.testing.assert_close(fusion.fusion.str_func_x(x, F.gelu), F.gelu(x))
    assert fusion.fusion.functions_to_configs(None) is None
    assert fusion.fusion.functions_to_configs([F.relu, "layer_norm"]) == [
        {"function_class": "torch.nn.ReLU", "function_parameters": {"inplace": False}},
        {"function_class": "layer_norm", "function_parameters": {"eps": 1e-5}},
    ]
    with pytest.raises(ValueError, match="cannot be written to a config"):
        fusion.fusion.functions_to_configs(lambda t: t)
    square = fusion.fusion.string_to_function("exp(x) - x**2 / 2", "x")
    assert square(0.0) == 1.0 and square(2.0) == pytest.approx(2.718281828459045**2 - 2)


def test_string_to_function_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    for formula in [
        f"__import__('os').system('touch {marker}')",
        "x.__class__",
        "open('f')",
        "[x for x in ()]",
        "lambda: 1",
    ]:
        with pytest.raises(ValueError, match="may use only|is not a formula"):
            fusion.fusion.string_to_function(formula, "x")
    assert not marker.exists()


def test_device_attribute_is_tinybigs_string_and_forward_honours_device():
    f = fusion.hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4])
    assert f.device == "cpu" and f.device == torch.device("cpu") and isinstance(f.device, str)
    assert f.to_config()["function_parameters"]["device"] == "cpu"
    x, w = [torch.randn(2, 4)], torch.randn(f.calculate_l())
    torch.testing.assert_close(f(x, w, device="cpu"), f(x, w))
    with pytest.raises(ValueError, match="device of the flat vector w is meta"):
        f(x, w, device="meta")  # W is moved where tinybig would move it
    owning = fusion.hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4], own_parameters=True)
    assert owning.device == "cpu"
    owning.fusion.to("meta")  # moved behind the adapter's back: the tensors' device wins
    assert owning.device == "meta"
    with pytest.raises(ValueError, match="is not a device"):
        fusion.concatenation_fusion(dims=[2], device="warp-drive")


def test_get_dim_out_of_bounds_is_tinybigs_index_error():
    f = fusion.concatenation_fusion(dims=[1, 2])
    with pytest.raises(IndexError, match="out of bounds"):
        f.get_dim(2)
    assert fusion.concatenation_fusion().get_dim(0) is None and f.get_num() == 2


# randomness ---------------------------------------------------------------------------------
def test_construction_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    for f in six_instances():
        assert f.calculate_l() > 0
    fusion.metric_fusion(dims=[2, 2], metric="batch_max")
    for name in TINYBIG_FUSION_NAMESPACE:
        cls = getattr(fusion, name)
        if cls not in SIX and cls is not fusion.metric_fusion:
            cls(dims=[2, 2])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_own_parameters_draw_from_the_global_rng_like_nn_linear():
    torch.manual_seed(3)
    a = fusion.hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4], own_parameters=True)
    torch.manual_seed(3)
    b = fusion.hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4], own_parameters=True)
    torch.testing.assert_close(a.fusion.flat_parameters(), b.fusion.flat_parameters())


def test_random_matrices_without_a_seed_are_independent_and_saved():
    make = fusion.random_matrix_adaption_parameterized_concatenation_fusion
    a, b = make(r=2, n=4, dims=[3, 3]), make(r=2, n=4, dims=[3, 3])
    assert a.seed != b.seed and not torch.equal(a.R1, b.R1)
    c = make(r=2, n=4, dims=[3, 3])
    c.load_state_dict(a.state_dict())
    xs, w = [torch.randn(2, 3), torch.randn(2, 3)], torch.randn(6)
    torch.testing.assert_close(c(xs, w), a(xs, w), **TOL)
    rebuilt = fusion.from_config(a.to_config())  # the config keeps the seed drawn
    assert torch.equal(rebuilt.R1, a.R1) and torch.equal(rebuilt.R2, a.R2)
    owning = make(r=2, n=4, dims=[3, 3], seed=a.seed, own_parameters=True)
    assert torch.equal(owning.fusion.R1, a.R1)  # a seed means the same matrices either way


def test_set_random_matrices_in_float64_is_exact():
    R1, R2 = torch.randn(4, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    f = fusion.random_matrix_adaption_parameterized_concatenation_fusion(
        r=2, n=4, dims=[3, 3], dtype=torch.float64
    )
    f.set_random_matrices(R1, R2)
    assert torch.equal(f.R1, R1) and torch.equal(f.R2, R2)
    w = torch.randn(6, dtype=torch.float64)
    xs = [torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)]
    W = torch.diag(w[:4]) @ R1 @ torch.diag(w[4:]) @ R2.T
    torch.testing.assert_close(f(xs, w), torch.cat(xs, -1) @ W.T, **TOL)
    g = fusion.random_matrix_adaption_parameterized_concatenation_fusion(r=2, n=4, dims=[3, 3])
    g.set_random_matrices(R1, R2)  # a float32 module keeps its dtype (documented)
    assert g.R1.dtype == torch.float32 and torch.equal(g.R1, R1.float())


# third round (issue 23) ---------------------------------------------------------------------------
ROUND3_NORM = {"normalized_shape": 6, "dtype": torch.float64}


@pytest.mark.parametrize("label", ["list", "module", "config", "config_list"])
def test_processing_modules_registered_exactly_where_tinybig_registers_them(label):
    record = RECORDED["processing_head"]
    norm_config = {
        "function_class": "torch.nn.LayerNorm",
        "function_parameters": {"normalized_shape": 6},
    }
    kwargs = {
        "list": {"preprocess_functions": [nn.LayerNorm(**ROUND3_NORM)]},
        "module": {"preprocess_functions": nn.LayerNorm(**ROUND3_NORM)},
        "config": {"preprocess_function_configs": norm_config},
        "config_list": {"preprocess_function_configs": [norm_config]},
    }[label]
    f = fusion.hm_parameterized_concatenation_fusion(
        **record["fusion"]["kwargs"], layout="tinybig-0.2.1", **kwargs
    )
    assert sorted(Head(f).state_dict()) == record["state_keys"][label]
    # a config keeps the form, so that the rebuilt fusion registers the same keys
    rebuilt = fusion.from_config(json.loads(json.dumps(f.to_config())))
    assert sorted(Head(rebuilt).state_dict()) == record["state_keys"][label]


def _norm_head(record, **kwargs):
    norm = nn.LayerNorm(**ROUND3_NORM)
    norm.load_state_dict(_state(record["norm_initial"]))
    make = getattr(fusion, record["fusion"]["class"])
    f = make(
        **record["fusion"]["kwargs"], layout="tinybig-0.2.1", preprocess_functions=[norm], **kwargs
    )
    return Head(f), norm


def _train(head, record):
    optimizer = torch.optim.SGD(head.parameters(), lr=record["lr"])
    train = [t64(x) for x in record["train_x"]]
    losses = []
    for _ in record["losses"]:
        optimizer.zero_grad()
        loss = (head(train) - t64(record["train_target"])).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_layer_norm_preprocessing_trains_as_in_tinybig():
    """Found in issue 23: a listed nn.LayerNorm was registered, entered the state_dict and
    trained, so the losses left tinybig's from step 2 on."""
    record = RECORDED["processing_head"]
    head, norm = _norm_head(record)
    assert set(head.state_dict()) == set(record["state_dict"])
    head.load_state_dict(_state(record["initial_state_dict"]), strict=True)
    torch.testing.assert_close(t64(_train(head, record)), t64(record["losses"]), **TOL)
    for key, value in _state(record["state_dict"]).items():
        torch.testing.assert_close(head.state_dict()[key], value, **TOL)
    for key, value in _state(record["norm_after"]).items():  # the norm did not train
        torch.testing.assert_close(norm.state_dict()[key], value, **TOL)
    probe = [t64(x) for x in record["probe"]]
    torch.testing.assert_close(head(probe), t64(record["output"]), **TOL)


def test_register_processing_makes_the_norm_train():
    record = RECORDED["processing_head"]
    head, norm = _norm_head(record, register_processing=True)
    keys = {
        "channel_fusion.preprocess_functions.0.weight",
        "channel_fusion.preprocess_functions.0.bias",
    }
    assert set(head.state_dict()) == set(record["state_dict"]) | keys
    head.load_state_dict(_state(record["initial_state_dict"]), strict=False)
    losses = _train(head, record)
    assert losses[0] == pytest.approx(record["losses"][0], abs=1e-12)
    assert abs(losses[1] - record["losses"][1]) > 1e-6  # the norm's step changes the model
    assert not torch.equal(norm.weight, t64(record["norm_initial"]["weight"]))


def test_held_processing_modules_follow_eval_and_to():
    f = fusion.parameterized_concatenation_fusion(
        n=2,
        dims=[3, 3],
        preprocess_functions=[nn.Dropout(0.5)],
        postprocess_functions=[nn.LayerNorm(2)],
    )
    assert f.state_dict() == {}
    xs = [torch.ones(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)]
    w = torch.randn(1, 12, dtype=torch.float64)
    f.double().eval()  # the held LayerNorm becomes float64, the dropout stops dropping
    assert f.postprocess_functions[0].weight.dtype == torch.float64
    expected = F.layer_norm(torch.cat(xs, -1) @ w.reshape(2, 6).T, (2,))
    torch.testing.assert_close(f(xs, w=w), expected, **TOL)
    f.train()
    assert f.preprocess_functions[0].training


def _minimal_parameters(class_name):
    parameters = {"dims": [2, 2]}
    if class_name == "metric_fusion":
        parameters["metric"] = "batch_max"
    if "parameterized_concatenation" in class_name:
        parameters["n"] = 2
    if class_name.startswith(("hm_", "lphm_", "dual_lphm_")):
        parameters["p"] = 2
    if class_name.startswith(("lowrank_", "lphm_", "dual_lphm_", "random_")):
        parameters["r"] = 1
    return parameters


@pytest.mark.parametrize("path", sorted(RECORDED["submodules"]))
def test_tinybigs_submodule_paths_import(path):
    """Found in issue 23: `from hmfusion.compat.tinybig.metric_fusion import l1_norm_fusion`
    raised ModuleNotFoundError."""
    import importlib

    module = importlib.import_module(f"hmfusion.compat.tinybig.{path.rsplit('.', 1)[1]}")
    for name, class_name in RECORDED["submodules"][path].items():
        assert getattr(module, name) is getattr(fusion, class_name), (path, name)
    assert sorted(module.__all__) == sorted(RECORDED["submodules"][path])
    for class_name in set(
        RECORDED["submodules"][path].values()
    ):  # still the classes, as in tinybig
        assert isinstance(getattr(fusion, class_name), type)
        if class_name != "fusion":  # configs may name the class by this path
            config = {
                "function_class": f"hmfusion.compat.tinybig.{path.rsplit('.', 1)[1]}.{class_name}",
                "function_parameters": _minimal_parameters(class_name),
            }
            assert type(fusion.from_config(config)) is getattr(fusion, class_name)


def test_a_submodule_imported_first_leaves_the_class_names_alone():
    code = (
        "from hmfusion.compat.tinybig.metric_fusion import l1_norm_fusion\n"
        "import hmfusion.compat.tinybig.concatenation_fusion as c\n"
        "from hmfusion.compat.tinybig.parameterized_concatenation_fusion import "
        "hm_parameterized_concatenation_fusion\n"
        "import hmfusion.compat.tinybig as t\n"
        "assert isinstance(c, type) and c is t.concatenation_fusion, c\n"  # as in tinybig
        "assert isinstance(t.metric_fusion, type), t.metric_fusion\n"
        "assert isinstance(t.parameterized_concatenation_fusion, type)\n"
        "assert not isinstance(t.basic_fusion, type)\n"  # a module, as tinybig.fusion.basic_fusion
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_to_linear_route_to_a_true_kronecker_product_in_both_layouts():
    """Found in issue 23: `f.fusion.to_linear()` raised AttributeError in the legacy layout."""
    from hmfusion import HMConcatFusion

    record = RECORDED["checkpoint"]
    state = _state(record["state_dict"])
    probe = [t64(x) for x in record["probe"]]
    linear = nn.Linear(6, 6, dtype=torch.float64)
    linear.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
    rows = torch.cat([linear(probe[0]), probe[1]], -1).detach()
    make = getattr(fusion, record["fusion"]["class"])
    for layout in ("tinybig-0.2.1", "kronecker"):
        f = make(
            **record["fusion"]["kwargs"], layout=layout, own_parameters=True, dtype=torch.float64
        )
        f.fusion.load_flat_parameters(state["w_channel_fusion"])
        exported = f.fusion.to_linear()
        torch.testing.assert_close(exported.weight, f.to_linear(state["w_channel_fusion"]).weight)
        assert exported.bias is None and exported.weight.dtype == torch.float64
        if layout == "tinybig-0.2.1":  # tinybig's trained head, through the exported weight
            torch.testing.assert_close(exported(rows), t64(record["output"]), **TOL)
        # a true Kronecker sum fitted to it: exact with min(p·q, s·t) = 6 terms
        fitted = HMConcatFusion.from_linear(exported, [6, 6], p=2, q=3, terms=6)
        torch.testing.assert_close(fitted.weight, exported.weight, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="w is required"):
        make(**record["fusion"]["kwargs"]).to_linear()


def test_from_config_layout_of_a_tinybig_dump_reproduces_tinybig():
    """Found in issue 23: a tinybig dump took the Kronecker layout silently (no way shown to
    choose)."""
    record = RECORDED["checkpoint"]
    kwargs = record["fusion"]["kwargs"]
    tinybig_name = f"tinybig.fusion.parameterized_concatenation_fusion.{record['fusion']['class']}"
    state = _state(record["state_dict"])
    probe = [t64(x) for x in record["probe"]]

    def output(config, **options):
        head = Head(fusion.from_config(config, **options))
        head.load_state_dict(state, strict=True)
        return head.channel_fusion, head(probe)

    dump = {"function_class": tinybig_name, "function_parameters": dict(kwargs)}
    f, y = output(dump)  # a tinybig spelling: tinybig's layout, tinybig's outputs
    assert f.layout == "tinybig-0.2.1"
    torch.testing.assert_close(y, t64(record["output"]), **TOL)
    f, y = output(dump, layout="kronecker")  # chosen
    assert f.layout == "kronecker" and not torch.allclose(y, t64(record["output"]))
    ours = {"function_class": record["fusion"]["class"], "function_parameters": dict(kwargs)}
    assert fusion.from_config(ours).layout == "kronecker"  # the constructor's default
    assert fusion.from_config(ours, layout="tinybig-0.2.1").layout == "tinybig-0.2.1"
    written = {**ours, "function_parameters": {**kwargs, "layout": "tinybig-0.2.1"}}
    assert fusion.from_config(written).layout == "tinybig-0.2.1"
    with pytest.raises(ValueError, match="differs from the config's layout"):
        fusion.from_config(written, layout="kronecker")
    with pytest.raises(ValueError, match="layout must be one of"):
        fusion.from_config(ours, layout="kron")
    with pytest.raises(ValueError, match="applies only to the parameterized"):
        fusion.from_config(RECORDED["configs"][7]["to_config"], layout="kronecker")
    hm_dump = RECORDED["configs"][3]["to_config"]  # tinybig's own to_config() of an HM fusion
    assert hm_dump["function_class"].startswith("tinybig.")
    assert fusion.from_config(hm_dump).layout == "tinybig-0.2.1"


def test_mixed_input_dtypes_promote_as_in_tinybig():
    """Found in issue 23: float64 and float32 inputs with a float64 w raised TypeError."""
    record = RECORDED["mixed_dtypes"]
    f = fusion.hm_parameterized_concatenation_fusion(**record["kwargs"], layout="tinybig-0.2.1")
    x = [t64(record["x"][0]), t64(record["x"][1]).float()]
    assert [str(t.dtype) for t in x] == [f"torch.{d}" for d in record["x_dtypes"]]
    y = f(x=x, w=t64(record["w"]))
    assert str(y.dtype) == record["output_dtype"]
    torch.testing.assert_close(y, t64(record["output"]), **TOL)
    assert record["all_float32_error"] == "RuntimeError"  # tinybig: matmul's dtype mismatch
    with pytest.raises(TypeError, match="dtype"):
        f(x=[t.float() for t in x], w=t64(record["w"]))


def test_extra_forward_arguments_are_ignored_as_in_tinybig():
    """Found in issue 23: extra keywords to forward raised TypeError."""
    record = RECORDED["mixed_dtypes"]
    f = fusion.hm_parameterized_concatenation_fusion(**record["kwargs"], layout="tinybig-0.2.1")
    x = [t64(record["x"][0]), t64(record["x"][1]).float()]
    y = f(x=x, w=t64(record["w"]), foo=1, bar="baz")
    torch.testing.assert_close(y, t64(record["extra_keywords_output"]), **TOL)
    xs = [torch.ones(2, 3), torch.ones(2, 3)]
    for other in (fusion.sum_fusion(dims=[3, 3]), fusion.concatenation_fusion(dims=[3, 3])):
        torch.testing.assert_close(other(xs, None, "cpu", 7, foo=1), other(xs))


def test_sizes_assigned_after_construction_are_followed_or_refused():
    """Found in issue 23: `f.n = 8` was silently ignored (calculate_l() stayed 32)."""
    record = RECORDED["assigned_sizes"]
    case = record["hm_n"]
    f = fusion.hm_parameterized_concatenation_fusion(**case["kwargs"], layout="tinybig-0.2.1")
    f.n = case["n"]  # followed, as in tinybig
    assert (f.calculate_l(), f.calculate_n()) == (case["l"], case["n"])
    y = f(x=[t64(x) for x in case["x"]], w=t64(case["w"]))
    torch.testing.assert_close(y, t64(case["output"]), **TOL)
    assert f.to_config()["function_parameters"]["n"] == case["n"]

    case = record["dense_dims"]
    dense = fusion.parameterized_concatenation_fusion(**case["kwargs"])
    dense.dims = case["dims"]
    assert dense.calculate_l() == case["l"] and dense.get_dims() == case["dims"]
    y = dense(x=[t64(x) for x in case["x"]], w=t64(case["w"]))
    torch.testing.assert_close(y, t64(case["output"]), **TOL)

    case = record["hm_p"]  # tinybig ignores p (its fabrication keeps its own): refused here
    assert case["l_after"] == case["l_before"]
    f = fusion.hm_parameterized_concatenation_fusion(**case["kwargs"])
    with pytest.raises(AttributeError, match="p cannot change after construction"):
        f.p = case["p"]
    assert f.p == 4 and f.calculate_l() == case["l_before"]
    with pytest.raises(ValueError, match="must divide n=6"):  # an invalid size leaves it as it was
        f.n = 6
    assert f.n == 16 and f.calculate_l() == case["l_before"]
    own = fusion.hm_parameterized_concatenation_fusion(**case["kwargs"], own_parameters=True)
    with pytest.raises(AttributeError, match="own_parameters=True"):
        own.n = 8
    rm = fusion.random_matrix_adaption_parameterized_concatenation_fusion(r=2, n=4, dims=[4, 4])
    rm.n = 6  # the matrices are drawn anew from the same seed, in the new shape
    assert rm.R1.shape == (6, 2) and rm.calculate_l() == 8
    with pytest.raises(AttributeError, match="seed cannot change"):
        rm.seed = 3


def test_sizes_given_as_integral_float_or_tensor():
    """Found in issue 23: p=4.0 and n=torch.tensor(16) raised TypeError."""
    record = RECORDED["loose_sizes"]
    x, w = [t64(v) for v in record["x"]], t64(record["w"])
    kwargs = dict(record["kwargs"], layout="tinybig-0.2.1")
    f_tensor = fusion.hm_parameterized_concatenation_fusion(p=4, **dict(kwargs, n=torch.tensor(16)))
    assert f_tensor.calculate_l() == record["n_tensor"]["l"] and f_tensor.calculate_n() == 16
    assert record["n_tensor"]["forward_error"] is None
    torch.testing.assert_close(f_tensor(x=x, w=w), t64(record["n_tensor"]["output"]), **TOL)
    # tinybig: l = 48.0 (a float) and forward fails (TypeError); here p is the int 4
    assert record["p_float"]["l_type"] == "float" and record["p_float"]["forward_error"]
    f_float = fusion.hm_parameterized_concatenation_fusion(p=4.0, **kwargs)
    assert f_float.p == 4 and type(f_float.calculate_l()) is int
    torch.testing.assert_close(f_float(x=x, w=w), t64(record["n_tensor"]["output"]), **TOL)
    with pytest.raises(TypeError, match="p must be"):
        fusion.hm_parameterized_concatenation_fusion(p=4.5, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_random_matrices_on_an_unavailable_device_fail_at_construction():
    # a deliberate difference: R1, R2 are drawn at construction (tinybig: at the first call)
    with pytest.raises(ValueError, match="is not available"):
        fusion.random_matrix_adaption_parameterized_concatenation_fusion(
            r=2, n=4, dims=[4, 4], device="cuda"
        )


def test_softmax_by_name_and_in_configs():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    f = fusion.concatenation_fusion(dims=[4], postprocess_functions="softmax")
    torch.testing.assert_close(f([x]), torch.exp(x) / torch.exp(x).sum(-1, keepdim=True), **TOL)
    config = json.loads(json.dumps(f.to_config()))
    assert config["function_parameters"]["postprocess_function_configs"] == [
        {"function_class": "softmax", "function_parameters": {"dim": -1}}
    ]
    torch.testing.assert_close(fusion.from_config(config)([x]), f([x]), **TOL)
    g = fusion.concatenation_fusion(
        dims=[4],
        postprocess_function_configs={
            "function_class": "torch.nn.Softmax",
            "function_parameters": {"dim": 0},
        },
    )
    torch.testing.assert_close(g([x]), torch.exp(x) / torch.exp(x).sum(0, keepdim=True), **TOL)
    # the callable F.softmax is called as tinybig calls it (its implicit dim: 0 for 3-d input)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        h = fusion.concatenation_fusion(dims=[4], postprocess_functions=[F.softmax])([x])
    torch.testing.assert_close(h, torch.exp(x) / torch.exp(x).sum(0, keepdim=True), **TOL)


def test_a_renamed_tinybig_dump_needs_from_config():
    # a deliberate difference: the constructors refuse tinybig's bookkeeping keys (tinybig's own
    # loader calls cls(**function_parameters)); from_config drops exactly those keys
    dump = RECORDED["configs"][3]["to_config"]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        fusion.hm_parameterized_concatenation_fusion(**dump["function_parameters"])
    renamed = {
        **dump,
        "function_class": "hmfusion.compat.tinybig.hm_parameterized_concatenation_fusion",
    }
    assert fusion.from_config(renamed).calculate_l() == RECORDED["configs"][3]["l"]


def test_register_processing_assignment_is_checked():
    f = fusion.parameterized_concatenation_fusion(n=2, dims=[2], preprocess_functions=["relu"])
    with pytest.raises(TypeError, match="register_processing"):
        f.register_processing = "yes"
    assert f.register_processing is False and isinstance(f.preprocess_functions, list)
