"""Every Firework moire-al makes, and the spec keys they carry (the Python twin of the
YAML files in ``workflows/``). No other module builds a Firework or spells a spec key:
they call these builders and query with :func:`fw_query`.

A loop starts as one Firework (``init``); every later Firework is added by the loop
itself (:func:`round_branch`) or by ``moire-al resume`` (:func:`refit_workflow`).
Categories route work to workers: ``dft`` for labelling, ``fit`` for pool generation,
fitting and scoring, ``analysis`` for analyses of a model (:func:`analysis_workflow`,
:func:`md_workflow`).

Spec keys: ``_category`` (:data:`CATEGORY` of the step), ``_add_launchpad_and_fw_id``
(Firetasks reach the store through the LaunchPad), ``_allow_fizzled_parents`` (a fit or
summary runs once its parents are COMPLETED or FIZZLED), and ours, ``_moire``
(:data:`SPEC_KEY`): ``step`` (one of :data:`STEPS`), ``loop_id``, ``round``, ``model_id``,
``series``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml
from fireworks import Firework, Workflow

from moire_al.workflows.settings import FinetuneSettings, LoopSettings, NebFinetuneSettings
from moire_al.workflows.tasks import ExploreTask, FitRoundTask, InitLoopTask, LabelTask

SPEC_KEY = "_moire"
STEPS = ("init", "label", "explore", "fit", "fit_shard", "fit_reduce", "analysis", "md", "finetune", "finetune_neb")
CATEGORY = {"init": "fit", "label": "dft", "explore": "fit", "fit": "fit", "fit_shard": "fit", "fit_reduce": "fit",
            "analysis": "analysis", "md": "analysis", "finetune": "fit", "finetune_neb": "fit"}


def fw_spec(step: str, allow_fizzled_parents: bool = False, **tags) -> dict:
    """The spec of a moire-al Firework of ``step`` with its ``_moire`` tags."""
    spec = {"_add_launchpad_and_fw_id": True, "_category": CATEGORY[step], SPEC_KEY: {**tags, "step": step}}
    if allow_fizzled_parents:
        spec["_allow_fizzled_parents"] = True
    return spec


def fw_query(step: str | None = None, loop_id: str | None = None, round_: int | None = None, **tags) -> dict:
    """A query on the ``fireworks`` collection for moire-al Fireworks by their tags."""
    q = {f"spec.{SPEC_KEY}.{k}": v for k, v in
         {"step": step, "loop_id": loop_id, "round": round_, **tags}.items() if v is not None}
    return q


def fw_tags(fw_doc: dict) -> dict:
    """The ``_moire`` tags of a Firework document (as found with :func:`fw_query`)."""
    return (fw_doc.get("spec") or {}).get(SPEC_KEY) or {}


def hyperactive_loop(settings: LoopSettings, loop_id: str | None = None) -> Workflow:
    """The workflow users add with ``lpad add``: one init Firework with the parameters."""
    task = InitLoopTask(params=settings.as_dict(), **({"loop_id": loop_id} if loop_id else {}))
    name = settings.name or f"hyperactive {settings.material} ({settings.labeller})"
    fw = Firework([task], name="init: pool + initial selection", fw_id=-1, spec=fw_spec("init"))
    return Workflow([fw], name=name, metadata={"moire_al": "hyperactive_loop", "material": settings.material})


def fit_firework(settings: LoopSettings, loop_id: str, round_: int, parents=None, name: str | None = None,
                 fitted: bool = False):
    """Fit round ``round_`` once its parents (labels) are COMPLETED or FIZZLED (``fitted``:
    after the round's sharded fit, whose model it loads)."""
    extra = {"fitted": True} if fitted else {}
    return Firework([FitRoundTask(loop_id=loop_id, round=round_, params=settings.as_dict(), **extra)],
                    name=name or f"fit+score r{round_}", parents=parents or None,
                    spec=fw_spec("fit", allow_fizzled_parents=not fitted, loop_id=loop_id, round=round_, **extra))


def sharded_round_workflow(store, settings: LoopSettings, loop_id: str, round_: int, hashes: list[str],
                           keys: list[str]) -> Workflow:
    """Round ``round_``'s fit sharded (``settings.fit_shards`` shard Fireworks and a reduce that
    stores the round's model), then the rest of the round (test, score, select) in a fit
    Firework that loads it."""
    from moire_al.workflows.loop import model_params, round_model_id

    wf = sharded_fit_workflow(store, round_model_id(loop_id, round_), hashes, keys, model_params(settings),
                              settings.fit_shards, metadata={"loop_id": loop_id, "round": round_,
                                                             "material": settings.material})
    reduce = [fw for fw in wf.fws if fw.spec[SPEC_KEY]["step"] == "fit_reduce"]
    rest = fit_firework(settings, loop_id, round_, parents=reduce, fitted=True,
                        name=f"score r{round_} (sharded fit)")
    return Workflow(wf.fws + [rest], name=f"{loop_id} round {round_} sharded fit")


def refit_workflow(settings: LoopSettings, loop_id: str, round_: int) -> Workflow:
    """The refit ``moire-al resume`` appends after rerun labels of a stopped loop."""
    return Workflow([fit_firework(settings, loop_id, round_, name=f"fit+score r{round_} (after resume)")])


def label_fireworks(settings, loop_id: str, round_: int, hashes: list[str], **tags) -> list:
    """One labelling Firework per ``settings.chunk_size`` structures (``settings``: any
    settings with ``labeller``, ``labeller_settings``, ``chunk_size``)."""
    labels = []
    for i in range(0, len(hashes), settings.chunk_size):
        chunk = hashes[i:i + settings.chunk_size]
        labels.append(Firework(
            [LabelTask(loop_id=loop_id, round=round_, hashes=chunk, labeller=settings.labeller,
                       labeller_settings=settings.labeller_settings)],
            name=f"label r{round_} {chunk[0][:8]}" + (f" +{len(chunk) - 1}" if len(chunk) > 1 else ""),
            spec=fw_spec("label", loop_id=loop_id, round=round_, **tags)))
    return labels


def round_branch(settings: LoopSettings, loop_id: str, round_: int, hashes: list[str]) -> Workflow:
    """Label ``hashes`` (one Firework per chunk), then fit round ``round_``.

    The fit runs once every label is COMPLETED *or* FIZZLED (``_allow_fizzled_parents``),
    so one failed DFT run never blocks the round. With ``settings.explore`` a round
    >= 1 also has an ``explore`` Firework (category ``fit``, beside the labels, a parent
    of the fit): biased MD with the previous round's model, whose finds the fit scores.
    """
    labels = label_fireworks(settings, loop_id, round_, hashes)
    parents = list(labels)
    if settings.explore and round_ >= 1:
        parents.append(Firework([ExploreTask(loop_id=loop_id, round=round_, params=settings.as_dict())],
                                name=f"explore r{round_}", spec=fw_spec("explore", loop_id=loop_id, round=round_)))
    fit = fit_firework(settings, loop_id, round_, parents=parents)
    return Workflow(parents + [fit], name=f"{loop_id} round {round_}")


def analysis_workflow(material: str, model_id: str | None = None, analyses=None, quick: bool = False) -> Workflow:
    """The standard analysis suite of a model (by store id; None: reference potential)."""
    from moire_al.workflows.analysis import QUICK_STEPS, SUITE_STEPS, AnalysisTask

    analyses = tuple(analyses or (QUICK_STEPS if quick else SUITE_STEPS))
    mid = model_id or "reference"
    fws = [Firework([AnalysisTask(analysis=a, material=material, model_id=mid, quick=quick)],
                    name=f"{a} ({mid})", fw_id=-(i + 1), spec=fw_spec("analysis", model_id=mid))
           for i, a in enumerate(analyses)]
    return Workflow(fws, name=f"analysis suite {material} ({mid})",
                    metadata={"moire_al": "analysis_suite", "material": material})


def md_workflow(structure_hash: str, material: str, model_id: str | None = None, temperatures=(300.0,),
                steps: int = 1000, options: dict | None = None) -> Workflow:
    """MD of a stored structure (by hash) at each temperature, then D(T) (category
    ``analysis``). ``options``: keyword arguments of ``md_analysis`` (e.g.
    ``{"ensemble": "nve", "sample_every": 2, "kappa_runs": 3}``)."""
    from moire_al.workflows.analysis import MDSummaryTask, MDTask, check_md_options

    options = check_md_options(options)
    series = uuid.uuid4().hex[:12]
    mid = model_id or "reference"
    fws = [Firework([MDTask(structure_hash=structure_hash, material=material, temperature=float(T),
                            steps=int(steps), model_id=mid, options=options, series=series)],
                    name=f"md {float(T):g} K ({mid})", fw_id=-(i + 1), spec=fw_spec("md", model_id=mid, series=series))
           for i, T in enumerate(temperatures)]
    summary = Firework([MDSummaryTask(series=series, model_id=mid)], name=f"md D(T) ({mid})",
                       fw_id=-(len(fws) + 1), parents=fws,
                       spec=fw_spec("md", allow_fizzled_parents=True, model_id=mid, series=series))
    return Workflow(fws + [summary], name=f"md {material} {structure_hash[:10]} ({mid})",
                    metadata={"moire_al": "md", "material": material, "series": series})


def polarization_workflow(model_id: str | None = None, ms=None, options: dict | None = None,
                          fmax: float = 1e-3, d: float = 3.4, sweep_id: str | None = None) -> Workflow:
    """The polarization sweep of a model (store id; None: reference potential): one
    Firework per r = 1 cell ``ms`` (default: the seed's angles, 21.8° to 1.08°) and one
    that gathers them into P_max(θ). ``options``: plain-JSON keyword arguments of
    :func:`moire_al.analysis.polarization.polarization_analysis` (``model``: a dict of
    :class:`~moire_al.analysis.tightbinding.SlaterKoster` fields)."""
    from moire_al.analysis.polarization import SWEEP_MS
    from moire_al.workflows.analysis import PolarizationSweepPlotTask, PolarizationTask, _polarization_options

    mid = model_id or "reference"
    ms = tuple(int(m) for m in (ms or SWEEP_MS))
    sweep_id = sweep_id or uuid.uuid4().hex[:12]
    _polarization_options(options)  # a bad option fails here, not in a worker
    fws = [Firework([PolarizationTask(m=m, sweep_id=sweep_id, model_id=mid, options=options or {},
                                      fmax=fmax, d=d)],
                    name=f"polarization m={m} ({mid})", fw_id=-(i + 1),
                    spec=fw_spec("analysis", model_id=mid, sweep_id=sweep_id))
           for i, m in enumerate(ms)]
    gather = Firework([PolarizationSweepPlotTask(sweep_id=sweep_id, model_id=mid)],
                      name=f"polarization sweep plot ({mid})", fw_id=-(len(fws) + 1),
                      spec=fw_spec("analysis", allow_fizzled_parents=True, model_id=mid, sweep_id=sweep_id))
    return Workflow(fws + [gather], links_dict={fw.fw_id: [gather.fw_id] for fw in fws},
                    name=f"polarization sweep hbn ({mid})",
                    metadata={"moire_al": "polarization_sweep", "sweep_id": sweep_id})


def sharded_fit_workflow(store, fit_id: str, hashes: list[str], keys: list[str], params: dict,
                         n_shards: int, metadata: dict | None = None) -> Workflow:
    """A fit sharded across workers (:mod:`moire_al.workflows.fitting`): the plan (basis,
    E0) now, then ``n_shards`` shard Fireworks and one reduce Firework (category ``fit``;
    ``metadata`` goes with the stored model)."""
    from moire_al.workflows.fitting import FitReduceTask, FitShardTask, shard_plan

    plan, shards = shard_plan(store, fit_id, hashes, keys, params, n_shards)
    fws = [Firework([FitShardTask(fit_id=fit_id, shard=k, hashes=sh["hashes"], keys=sh["keys"], params=params,
                                  plan=plan, blocks=sh["blocks"])],
                    name=f"{fit_id} shard {k}", spec=fw_spec("fit_shard", fit_id=fit_id))
           for k, sh in enumerate(shards)]
    reduce = Firework([FitReduceTask(fit_id=fit_id, hashes=hashes, keys=keys, params=params, plan=plan,
                                     n_shards=n_shards, **({"metadata": metadata} if metadata else {}))],
                      name=f"{fit_id} reduce", parents=fws,
                      spec=fw_spec("fit_reduce", fit_id=fit_id))
    return Workflow(fws + [reduce], name=f"sharded fit {fit_id}")


def finetune_branch(settings: FinetuneSettings, finetune_id: str, neb: NebFinetuneSettings | None = None,
                    round_: int = 0) -> Workflow:
    """Label ``settings.task`` (the normal labelling Fireworks, tagged ``finetune_id``), then
    refit (category ``fit``, once every label is COMPLETED or FIZZLED); with ``neb``, the
    NEB with the fine-tuned model after the refit (round ``round_`` of the NEB workflow)."""
    from moire_al.workflows.finetuning import FinetuneTask, NebFinetuneTask

    labels = label_fireworks(settings, finetune_id, 0, settings.task, finetune_id=finetune_id)
    fit = Firework([FinetuneTask(params=settings.as_dict(), finetune_id=finetune_id)],
                   name=f"finetune {finetune_id}", parents=labels or None,
                   spec=fw_spec("finetune", allow_fizzled_parents=True, finetune_id=finetune_id))
    fws = labels + [fit]
    if neb is not None:
        fws.append(Firework([NebFinetuneTask(params=neb.as_dict(), stage="after", finetune_id=finetune_id,
                                             finetune=settings.as_dict(), round=round_)],
                            name=f"NEB after fine-tuning {finetune_id}", parents=[fit],
                            spec=fw_spec("finetune_neb", finetune_id=finetune_id, stage="after")))
    return Workflow(fws, name=settings.name or f"fine-tuning {finetune_id}",
                    metadata={"moire_al": "finetune", "finetune_id": finetune_id})


def finetune_workflow(settings: FinetuneSettings) -> Workflow:
    """The fine-tuning ``moire-al finetune --workflow`` adds (its ``finetune_id`` set)."""
    from moire_al.errors import SettingsError

    if not settings.finetune_id or not settings.model_id or not settings.task or not settings.train:
        raise SettingsError("a fine-tuning workflow needs finetune_id, model_id, task and train")
    return finetune_branch(settings, settings.finetune_id)


def neb_finetune_workflow(settings: NebFinetuneSettings) -> Workflow:
    """Seed 003's example: base model → vacancy NEB → label the images → refit → NEB
    again. One Firework; it adds the rest (:func:`finetune_branch`) when it has the images."""
    from moire_al.workflows.finetuning import NebFinetuneTask

    fw = Firework([NebFinetuneTask(params=settings.as_dict(), stage="before")],
                  name="base model + NEB before fine-tuning", fw_id=-1,
                  spec=fw_spec("finetune_neb", stage="before"))
    return Workflow([fw], name=settings.name or f"NEB fine-tuning {settings.material} ({settings.labeller})",
                    metadata={"moire_al": "neb_finetune", "material": settings.material})


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


# Ready fine-tuning workflows: seed 003's vacancy NEB example. The base model is fitted on
# the committed CP2K labels (replayed); the images are labelled by CP2K live (75 atoms each).
# Up to 3 rounds: measured with CP2K, one round moved the model's barrier from 2.87 to
# 0.22 eV while CP2K gave 3.34 eV along the base path; the new path needs labels of its own.
READY_NEB_FINETUNES = {
    "graphene_neb_finetune_cp2k": NebFinetuneSettings(
        material="graphene", m=2, r=1, labeller="cp2k", train_file="data/dft/graphene.extxyz",
        rounds=3, barrier_tol=0.1,
        name="NEB fine-tuning graphene: vacancy in a 13.2 deg twisted bilayer, 75 atoms (CP2K PBE+D3(BJ))"),
}


# Ready analysis suites: name -> (material, model id, quick). "reference" runs the
# reference potential; put a model id from `moire-al status` to analyse a model.
READY_ANALYSES = {
    "analysis_graphene": ("graphene", "reference", False),
    "analysis_hbn": ("hbn", "reference", False),
}


def ready_workflows() -> dict:
    """Every ready workflow file's stem -> the workflow the builders make."""
    out = {stem: hyperactive_loop(s) for stem, s in READY_LOOPS.items()}
    out.update({stem: analysis_workflow(m, model_id=mid, quick=q) for stem, (m, mid, q) in READY_ANALYSES.items()})
    out.update({stem: neb_finetune_workflow(s) for stem, s in READY_NEB_FINETUNES.items()})
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
                "Parameters: see moire_al/workflows/settings.py (NebFinetuneSettings)."
                if stem in READY_NEB_FINETUNES else
                "model_id: 'reference' = the reference potential; put a model id (moire-al status) to analyse it.")
        header = (f"# {wf.name}\n# Add it with:  lpad -l launchpad.yaml add workflows/{path.name}\n"
                  "# then run workers:  rlaunch -l launchpad.yaml -w fworkers/all.yaml rapidfire\n"
                  f"# {what}\n")
        body = yaml.safe_dump(workflow_file_dict(wf), sort_keys=False, default_flow_style=False)
        path.write_text(header + body)
        out.append(path)
    return out
