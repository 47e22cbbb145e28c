"""Analyses of a fitted model as Fireworks (category ``analysis``).

One Firework per analysis of the standard suite (:func:`moire_al.analysis.suite.run_suite`),
so a slow or failing analysis does not hold up the others. The model comes from the
store by id (or ``calc: reference`` for the reference potential); results are stored
in the ``analyses`` collection with the model id they came from, plots stay in the
launch directory (its path is stored).

Molecular dynamics (:func:`md_workflow`): one Firework per temperature
(:class:`MDTask`) on a structure from the store, each storing its ``md.json`` result
(analysis ``"md"``; the trajectory stays in its launch directory, its path stored), and
a child (:class:`MDSummaryTask`) that reads them back and stores D(T) with its
Arrhenius fit (analysis ``"md_temperatures"``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fireworks import Firework, FiretaskBase, FWAction, Workflow, explicit_serialize

from moire_al.conventions import plain
from moire_al.store.mongo import Store, utcnow

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
        lp = getattr(self, "launchpad", None)
        if lp is None:
            from moire_al.config import get_launchpad

            lp = get_launchpad()
        store = Store.from_launchpad(lp)
        model_id = self.get("model_id")
        calc, calc_name = model_calculator(store, model_id, self["material"], os.getcwd())
        out = run_suite(self["material"], calc, calc_name, os.getcwd(), quick=bool(self.get("quick")),
                        only=[name])
        doc = {"model_id": model_id or "reference", "analysis": name, "material": self["material"],
               "calc_name": calc_name, "result": out["results"].get(name), "error": out["errors"].get(name),
               "launch_dir": os.getcwd(), "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.db["analyses"].insert_one(plain(doc))
        if doc["error"]:
            raise MoireALError(f"analysis {name} failed: {doc['error']}")
        return FWAction(stored_data={"analysis": name, "model_id": doc["model_id"]})


def analysis_workflow(material: str, model_id: str | None = None, analyses=None, quick: bool = False) -> Workflow:
    """The standard analysis suite of a model (by store id; None: reference potential)."""
    analyses = tuple(analyses or (QUICK_STEPS if quick else SUITE_STEPS))
    fws = [Firework([AnalysisTask(analysis=a, material=material, model_id=model_id or "reference", quick=quick)],
                    name=f"{a} ({model_id or 'reference'})", fw_id=-(i + 1),
                    spec={"_category": "analysis", "_add_launchpad_and_fw_id": True,
                          "_moire": {"step": "analysis", "model_id": model_id or "reference"}})
           for i, a in enumerate(analyses)]
    return Workflow(fws, name=f"analysis suite {material} ({model_id or 'reference'})",
                    metadata={"moire_al": "analysis_suite", "material": material})


def _store(task) -> Store:
    lp = getattr(task, "launchpad", None)
    if lp is None:
        from moire_al.config import get_launchpad

        lp = get_launchpad()
    return Store.from_launchpad(lp)


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
        store.db["analyses"].insert_one(plain(doc))
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
        docs = store.db["analyses"].find({"analysis": "md", "series": self["series"]}, {"_id": 0, "result": 1})
        series = temperature_series([d["result"] for d in docs])
        points = series["points"]
        doc = {"model_id": self.get("model_id") or "reference", "analysis": "md_temperatures",
               "series": self["series"], "result": series,
               "error": None, "created": utcnow(), "fw_id": getattr(self, "fw_id", None)}
        store.db["analyses"].insert_one(plain(doc))
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


def md_workflow(structure_hash: str, material: str, model_id: str | None = None, temperatures=(300.0,),
                steps: int = 1000, options: dict | None = None) -> Workflow:
    """MD of a stored structure (by hash) at each temperature, then D(T) (category
    ``analysis``). ``options``: keyword arguments of ``md_analysis`` (e.g.
    ``{"ensemble": "nve", "sample_every": 2, "kappa_runs": 3}``)."""
    options = check_md_options(options)
    series = uuid.uuid4().hex[:12]
    mid = model_id or "reference"
    spec = {"_category": "analysis", "_add_launchpad_and_fw_id": True,
            "_moire": {"step": "md", "model_id": mid, "series": series}}
    fws = [Firework([MDTask(structure_hash=structure_hash, material=material, temperature=float(T),
                            steps=int(steps), model_id=mid, options=options, series=series)],
                    name=f"md {float(T):g} K ({mid})", fw_id=-(i + 1), spec=dict(spec))
           for i, T in enumerate(temperatures)]
    summary = Firework([MDSummaryTask(series=series, model_id=mid)], name=f"md D(T) ({mid})",
                       fw_id=-(len(fws) + 1), parents=fws, spec=dict(spec, _allow_fizzled_parents=True))
    return Workflow(fws + [summary], name=f"md {material} {structure_hash[:10]} ({mid})",
                    metadata={"moire_al": "md", "material": material, "series": series})
