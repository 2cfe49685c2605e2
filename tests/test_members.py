"""Generic tests over the registry: every member and sample against its float64 reference,
W never formed where the member promises it, and each member's own documentation."""

from __future__ import annotations

import doctest
import inspect
import pydoc

import pytest
import torch

import hmfusion
from hmfusion import _validation, fusion, structures
from hmfusion.structures import blocksizes, fitting
from hmfusion.fusion import base, dense, kronecker
from registry import F64, MEMBERS, RecordShapes, reference_forward, reference_weight, rel_err
from registry import samples as registry_samples

SAMPLES = registry_samples()
IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize("kind,kwargs", SAMPLES, ids=IDS)
def test_sample_matches_reference_forward_and_gradients(kind, kwargs):
    torch.manual_seed(0)
    module = MEMBERS[kind].cls(**kwargs, bias=True, dtype=F64)
    xs = [torch.randn(2, 3, d, dtype=F64, requires_grad=True) for d in kwargs["dims"]]
    y, expected = module(xs), reference_forward(module, xs)
    assert y.shape == (2, 3, module.n) and rel_err(y, expected) < 1e-12
    params = list(module.parameters())
    got = torch.autograd.grad(y.square().sum(), xs + params)
    want = torch.autograd.grad(expected.square().sum(), xs + params)
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(got, want))
    assert rel_err(module.weight, reference_weight(module)) < 1e-12


@pytest.mark.parametrize("kind,kwargs", SAMPLES, ids=IDS)
def test_sample_parameter_count_is_the_tables(kind, kwargs):
    module = MEMBERS[kind].cls(**kwargs)
    n, D = module.n, sum(kwargs["dims"])
    s, t = getattr(module, "s", None), getattr(module, "t", None)
    expected = MEMBERS[kind].num_parameters(
        n, D, kwargs.get("p"), kwargs.get("q"), kwargs.get("r"), kwargs.get("terms", 1), s, t
    )
    assert module.num_parameters == expected == module.flat_parameters().numel()


@pytest.mark.parametrize(  # random-matrix adaptation has fixed random factors: nothing to fit
    "kind,kwargs", [(kind, kwargs) for kind, kwargs in SAMPLES if MEMBERS[kind].fits]
)
def test_sample_from_linear_round_trip(kind, kwargs):
    """A member built from its own W (via to_linear) reproduces W exactly."""
    torch.manual_seed(1)
    module = MEMBERS[kind].cls(**kwargs, bias=True, dtype=F64)
    args = {k: v for k, v in kwargs.items() if k not in ("dims", "n")}
    fitted = MEMBERS[kind].cls.from_linear(module.to_linear(), kwargs["dims"], **args)
    assert rel_err(reference_weight(fitted), reference_weight(module)) < 1e-8


# W never formed ------------------------------------------------------------------------------
LARGE = {  # n = D = 512: n·D = 2^18, the factors and activations are far smaller
    "lowrank": dict(r=4),
    "hm": dict(p=16, q=16),
    "lphm": dict(p=16, q=16, r=4),
    "dual_lphm": dict(p=16, q=16, r=4),
    "random": dict(r=4),
}


@pytest.mark.parametrize("kind", sorted(LARGE))
def test_forward_and_backward_never_form_the_weight(kind, simulated_cpu):
    n = D = 512
    module = MEMBERS[kind].cls([128] * 4, n, **LARGE[kind], bias=True)
    if hasattr(module, "plan"):
        assert module.plan(8).method != "materialize"
    xs = [torch.randn(8, 128, requires_grad=True) for _ in range(4)]
    with RecordShapes() as rec:
        module(xs).square().sum().backward()
    assert rec.ops, "the dispatch mode saw no operator"
    assert rec.largest < n * D // 8, f"an intermediate of {rec.largest} elements appeared"


def test_the_materialize_plan_is_the_one_that_forms_the_weight(simulated_cpu):
    module = hmfusion.HMConcatFusion([64, 64], 64, p=1)  # W = a·B: factoring saves nothing
    assert module.plan(4096).method == "materialize"
    with RecordShapes() as rec:
        module([torch.randn(4096, 64), torch.randn(4096, 64)])
    assert rec.largest >= 64 * 128  # W (64×128) appears, as plan(m) said


# documentation -------------------------------------------------------------------------------
CORE_MODULES = [
    hmfusion,
    fusion,
    base,
    dense,
    kronecker,
    structures,
    blocksizes,
    fitting,
    _validation,
]
PUBLIC = sorted(  # constants are documented by their #: comment
    (m.__name__, name)
    for m in CORE_MODULES
    for name in m.__all__
    if not isinstance(getattr(m, name), (int, str)) and name not in ("Device", "BlockSize")
)


@pytest.mark.parametrize("module_name,name", PUBLIC)
def test_every_public_name_has_its_own_docstring(module_name, name):
    import importlib

    obj = getattr(importlib.import_module(module_name), name)
    own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert own and own.strip(), f"{module_name}.{name} has no docstring of its own"


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_help_shows_each_members_own_formula_and_sections(kind):
    cls = MEMBERS[kind].cls
    own = cls.__dict__["__doc__"]
    assert "W" in own.splitlines()[0] and "Y =" in own.splitlines()[0]  # formula first
    for section in ("Args:", "Shape:", "Attributes:", "Raises:", "Example:"):
        assert section in own, f"{cls.__name__} lacks {section}"
    assert "Example::" not in own and ":math:" not in own  # Markdown (mkdocstrings), not reST
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert own.splitlines()[0].strip() in text
    # the properties a member adds are documented too
    for name, value in vars(cls).items():
        if isinstance(value, property) and not name.startswith("_"):
            assert value.__doc__, f"{cls.__name__}.{name}"


@pytest.mark.parametrize(
    "module", [base, dense, kronecker, blocksizes, fitting], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, globs=vars(module).copy()) if t.examples]
    assert tests, "no examples found"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
