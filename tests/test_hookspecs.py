"""Every hook spec is documented: parameters, return contract and an example (a new undocumented hook fails here)."""

import inspect

import pytest

from llama_host import hookspecs

SPECS = [f for name, f in vars(hookspecs).items()
         if callable(f) and hasattr(f, hookspecs.PROJECT + "_spec")]


def test_there_are_hook_specs():
    assert {f.__name__ for f in SPECS} >= {"config_schema", "lifespan", "register_surfaces", "register_runtimes",
                                          "discover_models", "resolve_model", "track_event"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hook_is_documented(spec):
    doc = inspect.getdoc(spec) or ""
    assert len(doc.splitlines()[0]) > 20, "a one-line summary"
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"parameter {param} undocumented"
    assert ":returns:" in doc
    assert "Example::" in doc
