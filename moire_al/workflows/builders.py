"""Workflow builders (the Python twin of the YAML files in ``workflows/``).

A loop starts as one Firework (``init``); every later Firework is added by the
loop itself. Categories route work to workers: ``dft`` for labelling, ``fit`` for
pool generation, fitting and scoring, ``analysis`` for analyses of a model.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from fireworks import Firework, Workflow

from moire_al.workflows.settings import LoopSettings
from moire_al.workflows.tasks import ExploreTask, FitRoundTask, InitLoopTask, LabelTask

COMMON_SPEC = {"_add_launchpad_and_fw_id": True}


def hyperactive_loop(settings: LoopSettings, loop_id: str | None = None) -> Workflow:
    """The workflow users add with ``lpad add``: one init Firework with the parameters."""
    task = InitLoopTask(params=settings.as_dict(), **({"loop_id": loop_id} if loop_id else {}))
    name = settings.name or f"hyperactive {settings.material} ({settings.labeller})"
    fw = Firework([task], name="init: pool + initial selection", fw_id=-1,
                  spec={**COMMON_SPEC, "_category": "fit", "_moire": {"step": "init"}})
    return Workflow([fw], name=name, metadata={"moire_al": "hyperactive_loop", "material": settings.material})


def round_branch(settings: LoopSettings, loop_id: str, round_: int, hashes: list[str]) -> Workflow:
    """Label ``hashes`` (one Firework per chunk), then fit round ``round_``.

    The fit runs once every label is COMPLETED *or* FIZZLED (``_allow_fizzled_parents``),
    so one failed DFT run never blocks the round. With ``settings.explore`` a round
    >= 1 also has an ``explore`` Firework (category ``fit``, beside the labels, a parent
    of the fit): biased MD with the previous round's model, whose finds the fit scores.
    """
    tag = {"loop_id": loop_id, "round": round_}
    labels = []
    for i in range(0, len(hashes), settings.chunk_size):
        chunk = hashes[i:i + settings.chunk_size]
        labels.append(Firework(
            [LabelTask(loop_id=loop_id, round=round_, hashes=chunk, labeller=settings.labeller,
                       labeller_settings=settings.labeller_settings)],
            name=f"label r{round_} {chunk[0][:8]}" + (f" +{len(chunk) - 1}" if len(chunk) > 1 else ""),
            spec={**COMMON_SPEC, "_category": "dft", "_moire": {**tag, "step": "label"}}))
    parents = list(labels)
    if settings.explore and round_ >= 1:
        parents.append(Firework([ExploreTask(loop_id=loop_id, round=round_, params=settings.as_dict())],
                                name=f"explore r{round_}",
                                spec={**COMMON_SPEC, "_category": "fit", "_moire": {**tag, "step": "explore"}}))
    fit = Firework([FitRoundTask(loop_id=loop_id, round=round_, params=settings.as_dict())],
                   name=f"fit+score r{round_}", parents=parents or None,
                   spec={**COMMON_SPEC, "_category": "fit", "_allow_fizzled_parents": True,
                         "_moire": {**tag, "step": "fit"}})
    return Workflow(parents + [fit], name=f"{loop_id} round {round_}")


# Ready workflow files in workflows/: name -> settings.
READY_LOOPS = {
    "graphene_hyperactive": LoopSettings(material="graphene", name="hyperactive graphene (reference potential)"),
    "hbn_hyperactive": LoopSettings(material="hbn", name="hyperactive hBN (reference potential)"),
    "graphene_hyperactive_cp2k": LoopSettings(
        material="graphene", labeller="cp2k", name="hyperactive graphene (CP2K PBE+D3(BJ))",
        labeller_settings={}, max_rounds=20),
    "hbn_hyperactive_cp2k": LoopSettings(
        material="hbn", labeller="cp2k", name="hyperactive hBN (CP2K PBE+D3(BJ))",
        labeller_settings={}, max_rounds=20),
    # the committed CP2K set as the pool, its labels replayed: learning on DFT at the cost of the fits
    "graphene_dft_replay": LoopSettings(
        material="graphene", pool={"file": "data/dft/graphene.extxyz", "layers": [1, 2, 3]},
        labeller="dataset", labeller_settings={"path": "data/dft/graphene.extxyz"},
        model={}, n_initial=10, n_test=25, batch_size=10, max_rounds=6,
        name="hyperactive graphene (replayed CP2K labels)"),
}


# Ready analysis suites: name -> (material, model id, quick). "reference" runs the
# reference potential; put a model id from `moire-al status` to analyse a model.
READY_ANALYSES = {
    "analysis_graphene": ("graphene", "reference", False),
    "analysis_hbn": ("hbn", "reference", False),
}


def ready_workflows() -> dict:
    """Every ready workflow file's stem -> the workflow the builders make."""
    from moire_al.workflows.analysis import analysis_workflow

    out = {stem: hyperactive_loop(s) for stem, s in READY_LOOPS.items()}
    out.update({stem: analysis_workflow(m, model_id=mid, quick=q) for stem, (m, mid, q) in READY_ANALYSES.items()})
    return out


def workflow_file_dict(wf: Workflow) -> dict:
    """A workflow as stored in a YAML file: without timestamps, which lpad sets on add."""
    d = wf.as_dict()
    for key in ("created_on", "updated_on"):
        d.pop(key, None)
    for fw in d["fws"]:
        fw.pop("created_on", None)
        fw.pop("updated_on", None)
    return d


def workflow_files_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "workflows"


def write_workflow_files(directory: str | Path | None = None) -> list[Path]:
    """(Re)write the ready YAML workflows; tests keep them equal to the builder."""
    directory = Path(directory or workflow_files_dir())
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for stem, wf in ready_workflows().items():
        path = directory / f"{stem}.yaml"
        what = ("Parameters: see moire_al/workflows/settings.py (LoopSettings)." if stem in READY_LOOPS else
                "model_id: 'reference' = the reference potential; put a model id (moire-al status) to analyse it.")
        header = (f"# {wf.name}\n# Add it with:  lpad -l launchpad.yaml add workflows/{path.name}\n"
                  "# then run workers:  rlaunch -l launchpad.yaml -w fworkers/all.yaml rapidfire\n"
                  f"# {what}\n")
        body = yaml.safe_dump(workflow_file_dict(wf), sort_keys=False, default_flow_style=False)
        path.write_text(header + body)
        out.append(path)
    return out
