"""The kit as a pytest plugin: one test item per check, device and dtype.

    pytest -p vera_conformance.pytest_plugin --pyargs vera_conformance \\
        --vera-impl mypkg.vera:make --vera-device cpu,cuda --vera-dtype float32,bfloat16
"""
from __future__ import annotations

import pytest

from .protocol import load_implementation
from .runner import default_dtypes, plan


def pytest_addoption(parser):
    g = parser.getgroup("vera", "VeRA conformance")
    g.addoption("--vera-impl", help="module:factory of the implementation (default $VERA_IMPL)")
    g.addoption("--vera-device", default="cpu", help="comma-separated devices (cpu, cuda)")
    g.addoption("--vera-dtype", default=None, help="comma-separated dtypes (default: float32, float16, "
                                                   "bfloat16 and float64, undeclared ones probed first, "
                                                   "and other precisions it declares such as tf32)")
    g.addoption("--vera-max-examples", type=int, default=50, help="hypothesis examples per property")


def pytest_generate_tests(metafunc):
    if "vera_item" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    spec = opt("--vera-impl")
    impl = load_implementation(spec)
    dtypes = opt("--vera-dtype").split(",") if opt("--vera-dtype") else default_dtypes(impl)
    items = plan(impl, opt("--vera-device").split(","), dtypes)
    metafunc.parametrize("vera_item", [(impl, spec or "", *it) for it in items], ids=[it[0] for it in items])


@pytest.fixture
def vera_max_examples(request):
    return request.config.getoption("--vera-max-examples")
