"""The model registry every paper joins.

>>> from minivit import models
>>> model = models.create("vit_fmnist", drop_path_rate=0.1)
>>> models.list_models("vit_*")

A paper file registers a config with ``@register_model``: a function taking
keyword overrides and returning a Module.
"""
from __future__ import annotations

import difflib
import fnmatch

_REGISTRY: dict = {}


def register_model(fn):
    """Decorator: make ``fn(**overrides) -> Module`` available as ``create(fn.__name__)``."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter ("swin_*")."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def create(name: str, **overrides):
    """Build a registered model, e.g. ``create("vit_fmnist", depth=4)``."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)


def _import_paper_files():
    """Import every paper file in this package, so each registers its configs."""
    import importlib
    import pkgutil
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_paper_files()
