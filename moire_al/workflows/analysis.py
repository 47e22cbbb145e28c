"""Analyses of a fitted model as Fireworks (category ``analysis``).

One Firework per analysis of the standard suite (:func:`moire_al.analysis.suite.run_suite`),
so a slow or failing analysis does not hold up the others. The model comes from the
store by id (or ``calc: reference`` for the reference potential); results are stored
in the ``analyses`` collection with the model id they came from, plots stay in the
launch directory (its path is stored).
"""

from __future__ import annotations

import os
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
