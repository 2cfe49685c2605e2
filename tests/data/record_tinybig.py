"""Record reference data from tinybig 0.2.1 into tests/data/tinybig-0.2.1-namespace.json.

Not run by the tests (they never import tinybig). To re-record: ``pip install tinybig==0.2.1
--no-deps`` plus numpy, scipy, pyyaml, requests, scikit-learn, sympy; put ``tinybig_import.py``
(which stubs tinybig's Python-3.12-only data package) on the path; then
``python tests/data/record_tinybig.py``. Everything is float64.

Recorded: the outputs of the 13 parameter-free classes of ``tinybig.fusion`` on fixed inputs;
``to_config()`` of every class as tinybig returns it (made JSON-safe: OrderedDict → dict,
set → list, tensors → lists, other objects → ``repr``); a tinybig-style head owning the flat
vector w of an HM fusion, trained 5 SGD steps, with its state_dict and outputs; and what
tinybig does with a few processing strings. Third round (issue 23): processing modules (which
are registered, and a head with a LayerNorm preprocessing trained 5 steps), the fusion classes of
each tinybig submodule, mixed input dtypes and extra keywords to `forward`, sizes assigned after
construction, and sizes given as an integral float or a 0-d tensor.
"""

import collections
import json
import pathlib
import warnings

import tinybig_import  # noqa: F401  (makes `import tinybig` work on Python 3.11)
import torch
from tinybig import fusion as tb

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).with_name("tinybig-0.2.1-namespace.json")


def jsonable(value):
    if isinstance(value, (collections.OrderedDict, dict)):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, set):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def inputs(generator, shapes):
    return [torch.randn(*shape, generator=generator) for shape in shapes]


g = torch.Generator().manual_seed(2024)
outputs = []
for cls_name, kwargs, shapes in [
    ("summation_fusion", {"dims": [3, 3]}, [(4, 3), (4, 3)]),
    ("average_fusion", {"dims": [3, 3, 3]}, [(2, 5, 3)] * 3),
    ("weighted_summation_fusion", {"dims": [2, 2, 2], "weights": [0.5, -1.0, 2.0]},
     [(4, 2)] * 3),
    ("parameterized_weighted_summation_fusion", {"dims": [3, 3]}, [(4, 3)] * 2),
    ("mean_fusion", {"dims": [3, 3, 3]}, [(4, 3)] * 3),
    ("max_fusion", {"dims": [3, 3, 3]}, [(2, 4, 3)] * 3),
    ("min_fusion", {"dims": [3, 3]}, [(4, 3)] * 2),
    ("sum_fusion", {"dims": [3, 3, 3]}, [(4, 3)] * 3),
    ("prod_fusion", {"dims": [3, 3, 3]}, [(4, 3)] * 3),
    ("median_fusion", {"dims": [3, 3, 3]}, [(4, 3)] * 3),
    ("median_fusion", {"dims": [3, 3, 3, 3]}, [(4, 3)] * 4),  # even k: the lower median
    ("concatenation_fusion", {"dims": [2, 3, 1]}, [(4, 2), (4, 3), (4, 1)]),
    ("concatenation_fusion", {"dims": [2, 2]}, [(3, 5, 2), (3, 5, 2)]),
]:
    make_kwargs = dict(kwargs)
    if "weights" in make_kwargs:
        make_kwargs["weights"] = torch.tensor(make_kwargs["weights"])
    f = getattr(tb, cls_name)(**make_kwargs)
    x = inputs(g, shapes)
    w = torch.randn(f.calculate_l(), generator=g) if f.calculate_l() else None  # tinybig: (k,)
    y = f(x=x, w=w)
    outputs.append({"class": cls_name, "kwargs": kwargs, "x": jsonable(x),
                    "w": jsonable(w), "n": f.calculate_n(), "l": f.calculate_l(),
                    "output": jsonable(y)})

configs = []
for cls_name, kwargs in [
    ("parameterized_concatenation_fusion", {"n": 4, "dims": [3, 3]}),
    ("parameterized_concatenation_fusion",
     {"n": 4, "dims": (3, 3), "preprocess_functions": [torch.nn.ReLU()],
      "postprocess_functions": [torch.nn.LayerNorm(4)]}),
    ("lowrank_parameterized_concatenation_fusion", {"r": 2, "n": 4, "dims": [3, 3]}),
    ("hm_parameterized_concatenation_fusion", {"p": 2, "q": 3, "n": 4, "dims": [3, 3]}),
    ("lphm_parameterized_concatenation_fusion", {"r": 1, "p": 2, "q": 3, "n": 4, "dims": [3, 3]}),
    ("dual_lphm_parameterized_concatenation_fusion",
     {"r": 1, "p": 2, "q": 3, "n": 4, "dims": [3, 3]}),
    ("random_matrix_adaption_parameterized_concatenation_fusion", {"r": 2, "n": 4, "dims": [3, 3]}),
    ("summation_fusion", {"dims": [3, 3]}),
    ("average_fusion", {"dims": [3, 3]}),
    ("weighted_summation_fusion", {"dims": [3, 3], "weights": [0.25, 0.75]}),
    ("parameterized_weighted_summation_fusion", {"dims": [3, 3]}),
    ("mean_fusion", {"dims": [3, 3]}),
    ("max_fusion", {"dims": [3, 3]}),
    ("min_fusion", {"dims": [3, 3]}),
    ("sum_fusion", {"dims": [3, 3]}),
    ("prod_fusion", {"dims": [3, 3]}),
    ("median_fusion", {"dims": [3, 3]}),
    ("concatenation_fusion", {"dims": [3, 3]}),
]:
    make_kwargs = dict(kwargs)
    if "weights" in make_kwargs:
        make_kwargs["weights"] = torch.tensor(make_kwargs["weights"])
    f = getattr(tb, cls_name)(**make_kwargs)
    configs.append({"class": cls_name, "n": f.calculate_n(), "l": f.calculate_l(),
                    "to_config": jsonable(f.to_config())})


class Head(torch.nn.Module):
    """A tinybig-style head: it owns the flat vector w of its fusion, as tinybig's heads do."""

    def __init__(self, fusion_module):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.channel_fusion = fusion_module
        self.w_channel_fusion = torch.nn.Parameter(
            torch.rand(1, fusion_module.calculate_l(), generator=g) - 0.5)

    def forward(self, x):
        return self.channel_fusion(x=[self.linear(x[0]), x[1]], w=self.w_channel_fusion,
                                   device="cpu")


torch.manual_seed(7)
head = Head(tb.hm_parameterized_concatenation_fusion(p=2, q=3, n=4, dims=[6, 6]))
initial = jsonable(head.state_dict())
optimizer = torch.optim.SGD(head.parameters(), lr=0.05)
train = inputs(g, [(16, 6), (16, 6)])
target = torch.randn(16, 4, generator=g)
losses = []
for _ in range(5):
    optimizer.zero_grad()
    loss = (head(train) - target).square().mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
probe = inputs(g, [(5, 6), (5, 6)])
checkpoint = {"fusion": {"class": "hm_parameterized_concatenation_fusion",
                         "kwargs": {"p": 2, "q": 3, "n": 4, "dims": [6, 6]}},
              "initial_state_dict": initial, "train_x": jsonable(train),
              "train_target": jsonable(target), "lr": 0.05, "losses": losses,
              "state_dict": jsonable(head.state_dict()),
              "probe": jsonable(probe), "output": jsonable(head(probe))}

strings = []
x = torch.linspace(-2, 2, 5)[None]
for name in ["relu", "torch.exp", "elu", "torch.nn.functional.elu", "torch.nn.ReLU", "sigmoid",
             "softmax"]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = tb.fusion.func_x(x, [name])
    strings.append({"name": name, "x": jsonable(x), "output": jsonable(y),
                    "warned": bool(caught)})

# Third round (issue 23): what a migrating user still hits. A separate generator, so that the
# data above stays as it was recorded.
g3 = torch.Generator().manual_seed(2323)


def error_of(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001  (recorded, not handled)
        return type(error).__name__
    return None


# Processing modules: held in a plain list (not registered), a single module or config registered
# by torch's attribute assignment. A head with a LayerNorm preprocessing trained 5 steps.
processing_state_keys = {}
for label, kwargs in [
    ("list", {"preprocess_functions": [torch.nn.LayerNorm(6)]}),
    ("module", {"preprocess_functions": torch.nn.LayerNorm(6)}),
    ("config", {"preprocess_function_configs": {"function_class": "torch.nn.LayerNorm",
                                                "function_parameters": {"normalized_shape": 6}}}),
    ("config_list", {"preprocess_function_configs": [
        {"function_class": "torch.nn.LayerNorm", "function_parameters": {"normalized_shape": 6}}]}),
]:
    f = tb.hm_parameterized_concatenation_fusion(p=2, q=3, n=4, dims=[6, 6], **kwargs)
    processing_state_keys[label] = sorted(Head(f).state_dict())

norm = torch.nn.LayerNorm(6)
with torch.no_grad():  # not the identity, so that training it would show
    norm.weight.copy_(1 + 0.5 * torch.randn(6, generator=g3))
    norm.bias.copy_(0.5 * torch.randn(6, generator=g3))
norm_initial = jsonable(norm.state_dict())
torch.manual_seed(23)
head = Head(tb.hm_parameterized_concatenation_fusion(p=2, q=3, n=4, dims=[6, 6],
                                                     preprocess_functions=[norm]))
initial = jsonable(head.state_dict())
optimizer = torch.optim.SGD(head.parameters(), lr=0.05)
train = inputs(g3, [(16, 6), (16, 6)])
target = torch.randn(16, 4, generator=g3)
losses = []
for _ in range(5):
    optimizer.zero_grad()
    loss = (head(train) - target).square().mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
probe = inputs(g3, [(5, 6), (5, 6)])
processing_head = {
    "fusion": {"class": "hm_parameterized_concatenation_fusion",
               "kwargs": {"p": 2, "q": 3, "n": 4, "dims": [6, 6]}},
    "state_keys": processing_state_keys, "norm_initial": norm_initial,
    "norm_after": jsonable(norm.state_dict()), "initial_state_dict": initial,
    "train_x": jsonable(train), "train_target": jsonable(target), "lr": 0.05, "losses": losses,
    "state_dict": jsonable(head.state_dict()), "probe": jsonable(probe),
    "output": jsonable(head(probe))}

# tinybig's submodules and the fusion classes each of them holds.
import inspect  # noqa: E402
import sys  # noqa: E402

submodules = {}
for path in ["tinybig.module.base_fusion", "tinybig.fusion.basic_fusion",
             "tinybig.fusion.metric_fusion", "tinybig.fusion.concatenation_fusion",
             "tinybig.fusion.parameterized_concatenation_fusion"]:
    module = sys.modules[path]
    submodules[path] = {name: value.__name__ for name, value in vars(module).items()
                        if inspect.isclass(value) and issubclass(value, tb.fusion)}

# Mixed dtypes: tinybig concatenates first (type promotion), then multiplies by W.
f = tb.hm_parameterized_concatenation_fusion(p=2, n=4, dims=[4, 4])
w64 = torch.randn(1, f.calculate_l(), generator=g3)
x_mixed = [torch.randn(3, 4, generator=g3), torch.randn(3, 4, generator=g3).float()]
mixed = {"kwargs": {"p": 2, "n": 4, "dims": [4, 4]}, "w": jsonable(w64),
         "x": jsonable(x_mixed), "x_dtypes": ["float64", "float32"],
         "output": jsonable(f(x=x_mixed, w=w64)), "output_dtype": str(f(x=x_mixed, w=w64).dtype),
         "all_float32_error": error_of(lambda: f(x=[x.float() for x in x_mixed], w=w64)),
         "extra_keywords_output": jsonable(f(x=x_mixed, w=w64, foo=1, bar="baz"))}

# Sizes assigned after construction: n and dims are followed, p is ignored (tinybig's
# parameter_fabrication keeps its own p).
f = tb.hm_parameterized_concatenation_fusion(p=4, n=16, dims=[16, 16])
f.n = 8
w_n = torch.randn(1, f.calculate_l(), generator=g3)
x_n = inputs(g3, [(3, 16), (3, 16)])
dense = tb.parameterized_concatenation_fusion(n=4, dims=[3, 3])
dense.dims = [3, 5]
w_d = torch.randn(1, dense.calculate_l(), generator=g3)
x_d = inputs(g3, [(2, 3), (2, 5)])
f_p = tb.hm_parameterized_concatenation_fusion(p=4, n=16, dims=[16, 16])
l_before = f_p.calculate_l()
f_p.p = 2
assigned = {
    "hm_n": {"kwargs": {"p": 4, "n": 16, "dims": [16, 16]}, "n": 8, "l": f.calculate_l(),
             "calculate_n": f.calculate_n(), "w": jsonable(w_n), "x": jsonable(x_n),
             "output": jsonable(f(x=x_n, w=w_n))},
    "dense_dims": {"kwargs": {"n": 4, "dims": [3, 3]}, "dims": [3, 5], "l": dense.calculate_l(),
                   "w": jsonable(w_d), "x": jsonable(x_d), "output": jsonable(dense(x=x_d, w=w_d))},
    "hm_p": {"kwargs": {"p": 4, "n": 16, "dims": [16, 16]}, "p": 2, "l_before": l_before,
             "l_after": f_p.calculate_l()},
}

# Sizes given as an integral float or a 0-d tensor.
f_float = tb.hm_parameterized_concatenation_fusion(p=4.0, n=16, dims=[16, 16])
f_tensor = tb.hm_parameterized_concatenation_fusion(p=4, n=torch.tensor(16), dims=[16, 16])
w_s = torch.randn(1, 48, generator=g3)
x_s = inputs(g3, [(2, 16), (2, 16)])
loose_sizes = {"kwargs": {"n": 16, "dims": [16, 16]},
               "p_float": {"l": jsonable(f_float.calculate_l()),
                           "l_type": type(f_float.calculate_l()).__name__,
                           "forward_error": error_of(lambda: f_float(x=x_s, w=w_s))},
               "n_tensor": {"l": jsonable(f_tensor.calculate_l()),
                            "n_type": type(f_tensor.calculate_n()).__name__,
                            "forward_error": error_of(lambda: f_tensor(x=x_s, w=w_s)),
                            "output": jsonable(f_tensor(x=x_s, w=w_s))},
               "w": jsonable(w_s), "x": jsonable(x_s)}

OUT.write_text(json.dumps({"source": "tinybig 0.2.1", "dtype": "float64", "outputs": outputs,
                           "configs": configs, "checkpoint": checkpoint,
                           "processing_strings": strings,
                           "processing_head": processing_head, "submodules": submodules,
                           "mixed_dtypes": mixed, "assigned_sizes": assigned,
                           "loose_sizes": loose_sizes}, indent=1) + "\n")
print("wrote", OUT)
