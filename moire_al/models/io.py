"""Model directory: ``model.json`` (hyperparameters, basis spec, D3 settings, E0,
training-set hash, package versions, fit report), ``coefficients.npz`` (posterior
mean, committee, prior diagonal), ``acejax_model.npz`` (the ACE part for ace-jax's
own ``ACECalculator``, D3 not included) and, when the export works, ``model.yace``
(ML-PACE, ACE part only). The basis itself is rebuilt from its spec on load (the
coupling cache makes that fast) and checked against the stored basis size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from moire_al.errors import ModelError
from moire_al.conventions import plain as _jsonable

log = logging.getLogger(__name__)


def acejax_tree(model):
    """The ace-jax ACEModel tree with our fitted readout (ACE part, E0 included)."""
    import dataclasses

    import jax.numpy as jnp
    from ace_jax.basis.export import readout_to_npz
    from ace_jax.eval.model import fold_readout

    b = model.basis_
    WB, Wpair = readout_to_npz(b.to_acejax(model.coef_), b.n_B, b.n_pair, b.NZ)
    # the basis tree is already folded (ctilde = A2Bᵀ WB of a zero readout): unfold, then refold
    m = dataclasses.replace(b.model, WB=jnp.asarray(WB), Wpair=jnp.asarray(Wpair),
                            E0=jnp.asarray(np.asarray(model.E0_, float)), folded=False, ctilde=None)
    return fold_readout(m)


def save_model(model, path: Path) -> Path:
    from .ace import FORMAT_VERSION, _versions
    from .d3 import d3_settings

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    b = model.basis_
    meta = {
        "format": "moire-al ACEModel", "format_version": FORMAT_VERSION,
        "params": model.get_params(), "basis": b.spec(), "n_basis": b.L,
        "elements": list(model.elements_), "E0": list(map(float, model.E0_)),
        "d3": {"enabled": bool(model.d3), **(d3_settings() if model.d3 else {}),
               "labels_with_d3": model.d3_labels_,
               "convention": "prediction = ACE + E0 + (D3 if enabled); labels with REF_d3 had D3 "
                             "subtracted before fitting when enabled"},
        "training_set_hash": model.training_hash_, "versions": _versions(),
        "blr": {"alpha": model.fit_info_["alpha"],
                "beta": model.fit_info_["beta"]},
        "fit_info": model.fit_info_, "fit_report": getattr(model, "fit_report_", None),
        "files": ["coefficients.npz"],
    }
    np.savez(path / "coefficients.npz", coef=model.coef_, committee=model.committee_, gamma=b.gamma,
             committee_E0=getattr(model, "committee_E0_", np.zeros((len(model.committee_), b.NZ))))
    try:
        from ace_jax.basis.export import save_npz

        save_npz(path / "acejax_model.npz", b._basis._replace(model=acejax_tree(model)))
        meta["files"].append("acejax_model.npz")
    except Exception as exc:  # pragma: no cover - an ace-jax API change
        log.warning("ace-jax npz export failed: %s", exc)
    try:
        from ace_jax.eval.pace_io import write_yace

        write_yace(acejax_tree(model), str(path / "model.yace"))
        meta["files"].append("model.yace")
    except Exception as exc:
        meta["yace_export_error"] = f"{type(exc).__name__}: {exc}"
    (path / "model.json").write_text(json.dumps(_jsonable(meta), indent=1))
    return path


def load_model(cls, path: Path):
    from .basis import ACEBasis

    path = Path(path)
    mj = path / "model.json"
    if not mj.exists():
        raise ModelError(f"{path}: not a model directory (no model.json)")
    meta = json.loads(mj.read_text())
    if meta.get("format") != "moire-al ACEModel":
        raise ModelError(f"{path}: unknown model format {meta.get('format')!r}")
    p = meta["params"]
    model = cls(**p)
    bs = meta["basis"]
    model.basis_ = ACEBasis(bs["elements"], bs["order"], bs["totaldegree"], bs["rcut"], bs["wL"])
    if model.basis_.L != meta["n_basis"]:
        raise ModelError(f"{path}: rebuilt basis has {model.basis_.L} functions, the file {meta['n_basis']}")
    z = np.load(path / "coefficients.npz")
    model.coef_ = np.asarray(z["coef"])
    model.committee_ = np.asarray(z["committee"])
    model.committee_E0_ = np.asarray(z["committee_E0"]) if "committee_E0" in z.files else None
    model.elements_ = tuple(meta["elements"])
    model.E0_ = np.asarray(meta["E0"], float)
    model.training_hash_ = meta["training_set_hash"]
    model.d3_labels_ = meta["d3"].get("labels_with_d3", [])
    model.fit_info_ = meta.get("fit_info", {})
    model.fit_report_ = meta.get("fit_report")
    model.saved_meta_ = meta
    model.blr_ = None
    return model
