"""Linear ACE potentials with Bayesian linear regression and a posterior committee.

Public API (imports are lazy so ``moire-al --help`` does not load JAX):

- :class:`ACEModel` (``moire_al.models.ace``): fit / predict / score / calculator / save / load
- :class:`BayesianLinearRegression` (``moire_al.models.blr``): the solver on (Ψ, y, w)
- :func:`rmse_table` (``moire_al.models.metrics``)
- :func:`julia_backend_status` (``moire_al.models.backends``)
"""

_LAZY = {
    "ACEModel": ("moire_al.models.ace", "ACEModel"),
    "FORCE_EPS": ("moire_al.models.ace", "FORCE_EPS"),
    "BayesianLinearRegression": ("moire_al.models.blr", "BayesianLinearRegression"),
    "rmse_table": ("moire_al.models.metrics", "rmse_table"),
    "format_table": ("moire_al.models.metrics", "format_table"),
    "ACEModelCalculator": ("moire_al.models.calculator", "ACEModelCalculator"),
    "julia_backend_status": ("moire_al.models.backends", "julia_backend_status"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(name)
