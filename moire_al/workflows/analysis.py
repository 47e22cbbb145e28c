"""Analyses of a fitted model as Fireworks (category ``analysis``).

One Firework per analysis of the standard suite (:func:`moire_al.analysis.suite.run_suite`),
so a slow or failing analysis does not hold up the others. The model comes from the
store by id (or ``calc: reference`` for the reference potential); results are stored
in the ``analyses`` collection with the model id they came from, plots stay in the
launch directory (its path is stored).

The Fireworks are built by :mod:`moire_al.workflows.builders` (``analysis_workflow``,
``md_workflow``, ``polarization_workflow``). Molecular dynamics: one Firework per temperature
(:class:`MDTask`) on a structure from the store, each storing its ``md.json`` result
(analysis ``"md"``; the trajectory stays in its launch directory, its path stored), and
a child (:class:`MDSummaryTask`) that reads them back and stores D(T) with its
Arrhenius fit (analysis ``"md_temperatures"``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fireworks import FiretaskBase, FWAction, explicit_serialize

from moire_al.store.mongo import Store, utcnow
from moire_al.workflows.tasks import _store

SUITE_STEPS = ("moire", "binding", "stress_strain", "phonons_monolayer", "phonons_ab", "phonons_twisted",
               "neb_vacancy", "defects", "moire_sweep")
QUICK_STEPS = ("moire", "binding", "stress_strain", "phonons_monolayer", "neb_vacancy", "defects")


def model_calculator(store: Store, model_id: str | None, material: str, workdir: str | Path):
    """(calculator, name) for a stored model id, or the reference potential when None."""
    if not model_id or model_id == "reference":
        from moire_al.labelling import reference_calculator

        return reference_calculator(material), f"reference potential ({material})"
    from moire_al.models import ACEModel

    model = ACEModel.load(store.get_model_dir(model_id, Path(workdir) / "model-files"))
    return model.calculator(committee=False), f"ACE {model_id}"


@explicit_serialize
class AnalysisTask(FiretaskBase):
    """Run one analysis of the standard suite with a stored model; store the result."""

    required_params = ["analysis", "material"]
    optional_params = ["model_id", "quick"]

    def run_task(self, fw_spec):
        from moire_al.analysis.suite import run_suite
        from moire_al.errors import MoireALError

        name = self["analysis"]
        if name not in SUITE_STEPS:
            raise MoireALError(f"unknown analysis {name!r}; known: {', '.join(SUITE_STEPS)}")
        store = _store(self)
        model_id = self.get("model_id")
        calc, calc_name = model_calculator(store, model_id, self["material"], os.getcwd())
        out = run_suite(self["material"], calc, calc_name, os.getcwd(), quick=bool(self.get("quick")),
                        only=[name])
        doc = {"model_id": model_id or "reference", "analysis": name, "material": self["material"],
               "calc_name": calc_name, "result": out["results"].get(name), "error": out["errors"].get(name),
               "launch_dir": os.getcwd(), "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.put_analysis(doc)
        if doc["error"]:
            raise MoireALError(f"analysis {name} failed: {doc['error']}")
        return FWAction(stored_data={"analysis": name, "model_id": doc["model_id"]})


@explicit_serialize
class MDTask(FiretaskBase):
    """MD at one temperature (:func:`moire_al.analysis.md.md_analysis`) of a stored
    structure with a stored model; the result in ``analyses``. A run that blows up
    is a result (``stable: false``), not a failure."""

    required_params = ["structure_hash", "material", "temperature", "steps"]
    optional_params = ["model_id", "options", "series"]

    def run_task(self, fw_spec):
        from moire_al.analysis.common import write_json
        from moire_al.analysis.md import md_analysis
        from moire_al.errors import MoireALError

        store = _store(self)
        try:
            atoms = store.get_structures([self["structure_hash"]])[0]
        except KeyError:
            raise MoireALError(f"structure {self['structure_hash']!r} is not in the store") from None
        model_id = self.get("model_id") or "reference"
        calc, calc_name = model_calculator(store, model_id, self["material"], os.getcwd())
        res = md_analysis(atoms, calc, calc_name, temperature=float(self["temperature"]),
                          steps=int(self["steps"]), outdir=os.getcwd(), **dict(self.get("options") or {}))
        write_json(res, os.path.join(os.getcwd(), "md.json"))
        doc = {"model_id": model_id, "analysis": "md", "material": self["material"],
               "structure_hash": self["structure_hash"], "temperature_K": float(self["temperature"]),
               "series": self.get("series"), "calc_name": calc_name, "stable": res["stable"], "result": res,
               "error": None, "launch_dir": os.getcwd(), "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.put_analysis(doc)
        return FWAction(stored_data={"analysis": "md", "model_id": model_id, "stable": res["stable"],
                                     "temperature_K": float(self["temperature"])})


@explicit_serialize
class MDSummaryTask(FiretaskBase):
    """D(T) and the Arrhenius fit of one series of :class:`MDTask` runs."""

    required_params = ["series"]
    optional_params = ["model_id"]

    def run_task(self, fw_spec):
        from moire_al.analysis.md import temperature_series

        store = _store(self)
        docs = store.get_analyses(analysis="md", series=self["series"])
        series = temperature_series([d["result"] for d in docs])
        points = series["points"]
        doc = {"model_id": self.get("model_id") or "reference", "analysis": "md_temperatures",
               "series": self["series"], "result": series,
               "error": None, "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.put_analysis(doc)
        return FWAction(stored_data={"analysis": "md_temperatures", "n_points": len(points)})


def check_md_options(options: dict | None) -> dict:
    """The options of :func:`md_workflow`, or a MoireALError naming the unknown ones."""
    from moire_al.analysis.md import MDSettings
    from moire_al.errors import MoireALError

    known = (set(MDSettings.__dataclass_fields__) - {"temperature_K", "steps"}) | {
        "relax_first", "pin_aa", "phonon_dos", "phonon_supercell", "kappa_runs", "kappa_steps",
        "kappa_equil_steps", "discard", "ensemble"}
    bad = set(options or {}) - known
    if bad:
        raise MoireALError(f"unknown MD option(s): {', '.join(sorted(bad))}")
    return dict(options or {})


# ------------------------------------------------------------------ polarization sweep
POLARIZATION_OPTIONS = {"model", "method", "n_moments", "probe_radius", "min_width", "height"}


def _polarization_options(options: dict | None) -> dict:
    """Spec options (plain JSON) → keyword arguments of the polarization analysis."""
    from moire_al.analysis.tightbinding import SlaterKoster
    from moire_al.errors import MoireALError

    opts = dict(options or {})
    unknown = set(opts) - POLARIZATION_OPTIONS
    if unknown:
        raise MoireALError(f"unknown polarization option(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(POLARIZATION_OPTIONS))}")
    if "model" in opts:
        try:
            opts["model"] = SlaterKoster(**opts["model"])
        except TypeError as exc:
            raise MoireALError(f"polarization option 'model': {exc}") from exc
    return opts


@explicit_serialize
class PolarizationTask(FiretaskBase):
    """One angle of the polarization sweep (seed 000 Fig. 4c): relax the r = 1 cell ``m``
    with a stored model (or the reference potential), evaluate relaxed and rigid, store
    the point in ``analyses`` (``analysis: "polarization"``, ``sweep_id``)."""

    required_params = ["m", "sweep_id"]
    optional_params = ["model_id", "options", "fmax", "d"]

    def run_task(self, fw_spec):
        from moire_al.analysis.polarization import polarization_sweep

        store = _store(self)
        model_id = self.get("model_id") or "reference"
        calc, calc_name = model_calculator(store, model_id, "hbn", os.getcwd())
        res = polarization_sweep("hbn", calc, calc_name, ms=(int(self["m"]),),
                                 fmax=float(self.get("fmax", 1e-3)), d=float(self.get("d", 3.4)),
                                 plot_dir=os.getcwd(), **_polarization_options(self.get("options")))
        point = res["points"][0]
        doc = {"model_id": model_id, "analysis": "polarization", "material": "hbn",
               "sweep_id": self["sweep_id"], "m": int(self["m"]), "theta_deg": point["theta_deg"],
               "calc_name": calc_name, "result": point, "settings": res["settings"],
               "rigid_d": res["rigid_d"], "error": None, "launch_dir": os.getcwd(),
               "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.put_analysis(doc)
        return FWAction(stored_data={"analysis": "polarization", "theta_deg": point["theta_deg"],
                                     "P_max_relaxed": point["relaxed"]["P_max_pC_per_m"]})


@explicit_serialize
class PolarizationSweepPlotTask(FiretaskBase):
    """After the angles: gather the sweep's points from ``analyses``, draw P_max(θ)
    relaxed vs rigid and store the whole sweep (``analysis: "polarization_sweep"``).
    Runs with whatever angles finished (``_allow_fizzled_parents``)."""

    required_params = ["sweep_id"]
    optional_params = ["model_id"]

    def run_task(self, fw_spec):
        from moire_al.analysis import plots
        from moire_al.errors import MoireALError

        store = _store(self)
        docs = store.get_analyses(analysis="polarization", sweep_id=self["sweep_id"])
        if not docs:
            raise MoireALError(f"polarization sweep {self['sweep_id']}: no angle finished")
        docs.sort(key=lambda d: d["theta_deg"])
        name = docs[0]["calc_name"]
        sweep = {"analysis": "polarization_sweep", "calc_name": name, "material": "hbn",
                 "rigid_d": docs[0].get("rigid_d"), "points": [d["result"] for d in docs],
                 "settings": docs[0]["settings"]}
        sweep["plots"] = plots.plot_polarization_sweep({name: sweep}, os.getcwd())
        store.put_analysis({
            "model_id": self.get("model_id") or "reference", "analysis": "polarization_sweep",
            "material": "hbn", "sweep_id": self["sweep_id"], "calc_name": name, "result": sweep,
            "error": None, "launch_dir": os.getcwd(), "created": utcnow(),
            "fw_id": getattr(self, "fw_id", None)})
        return FWAction(stored_data={"analysis": "polarization_sweep", "n_angles": len(docs)})


