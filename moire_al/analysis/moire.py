"""Moiré structure of a relaxed bilayer (seed 000, Figs 2 and 3).

Interlayer distance of an atom: mean |Δz| to its 3 nearest neighbours (in-plane
distance, periodic images included) in the other layer. From the per-atom values
of one layer (the top one by default) we get d_min, d_max, ⟨d⟩, an interpolated
map, the moiré period (dominant long-wavelength Fourier component of the map), the
relaxation displacements against the rigid twist, a local stacking label per atom
and the relaxation regime.
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy.spatial import cKDTree

from moire_al.analysis.common import (calc_label, jsonable, lattice_constant, layers_of,
                                      material_of, tiled_xy)
from moire_al.errors import StructureError

# Angle thresholds (degrees) of the four regimes of twisted hBN in seed 000.
REGIME_ANGLES = ((13.17, "moire"), (5.09, "transition"), (1.89, "soliton"))
STACKINGS = ("AA", "AB", "BA", "SP", "AA'")


def formula_period(theta_deg: float, a: float) -> float:
    """a / (2 sin(θ/2)), Å."""
    return a / (2.0 * math.sin(math.radians(theta_deg) / 2.0))


def regime_from_angle(theta_deg: float) -> str:
    """Regime by the twist-angle bounds of seed 000 (moire / transition / soliton /
    domain-soliton)."""
    for bound, name in REGIME_ANGLES:
        if theta_deg > bound:
            return name
    return "domain-soliton"


def regime_from_structure(d_range_rel: float, u_inplane_max: float,
                          domain_fraction: float) -> str:
    """Regime from what the relaxed structure shows, following the seed's
    description of each regime:

    - moiré: the interlayer distance hardly varies (range < 40 % of the AA-AB
      equilibrium difference, ``d_range_rel`` < 0.4) — close to a rigid twist;
    - transition: the distance varies, in-plane reconstruction still negligible
      (max in-plane displacement < 0.025 Å);
    - soliton: in-plane reconstruction, AB/BA domains present but not dominant
      (less than half of the atoms);
    - domain-soliton: AB/BA(/AA') domains cover at least half of the atoms.
    """
    if d_range_rel < 0.4:
        return "moire"
    if u_inplane_max < 0.025:
        return "transition"
    if domain_fraction < 0.5:
        return "soliton"
    return "domain-soliton"


# ------------------------------------------------------------------ per-atom fields
def _pick_layers(atoms, layer, other):
    layers = layers_of(atoms)
    ids = np.unique(layers)
    if len(ids) < 2:
        raise StructureError("moiré analysis needs at least two layers")
    if layer is None:
        layer = int(ids[-1])
    if other is None:
        below = ids[ids < layer]
        other = int(below[-1]) if len(below) else int(ids[ids > layer][0])
    return layers, int(layer), int(other)


def _neighbour_tree(atoms, mask):
    cell = atoms.cell.array
    xy, src = tiled_xy(atoms.positions[mask], cell, 1)
    return cKDTree(xy), src


def interlayer_distance(atoms, layer: int | None = None, other: int | None = None,
                        k: int = 3):
    """Per-atom interlayer distance of ``layer`` (default: top) relative to ``other``
    (default: the layer below). Returns ``(indices, d)``."""
    layers, layer, other = _pick_layers(atoms, layer, other)
    sel = np.where(layers == layer)[0]
    oth = np.where(layers == other)[0]
    tree, src = _neighbour_tree(atoms, layers == other)
    _, nn = tree.query(atoms.positions[sel, :2], k=k)
    z_other = atoms.positions[oth, 2][src[nn]]
    d = np.abs(z_other - atoms.positions[sel, 2][:, None]).mean(axis=1)
    return sel, d


def _sublattice(atoms, idx, layers):
    """0/1 sublattice per atom of ``idx`` (one layer): species for hBN (B = 0),
    bond orientation for graphene (3-fold phase of the three bonds)."""
    syms = np.array(atoms.get_chemical_symbols())[idx]
    if not np.all(syms == "C"):
        return (syms != "B").astype(int)
    cell = atoms.cell.array
    xy, src = tiled_xy(atoms.positions[idx], cell, 1)
    tree = cKDTree(xy)
    _, nn = tree.query(atoms.positions[idx, :2], k=4)
    vec = xy[nn[:, 1:]] - atoms.positions[idx, None, :2]
    phase = np.exp(3j * np.arctan2(vec[..., 1], vec[..., 0])).sum(axis=1)
    ref = phase[0] / abs(phase[0])
    return (np.real(phase * np.conj(ref)) < 0).astype(int)


def stacking_labels(atoms, layer: int | None = None, other: int | None = None,
                    a: float | None = None):
    """Local stacking per atom of ``layer`` over ``other``: AA, AB, BA, SP (and AA'
    for hBN eclipsed B-over-N). Returns ``(indices, labels)``.

    For an atom and its three intralayer neighbours, ρ is the in-plane distance to
    the nearest atom of the other layer, in units of the bond length b. Ideal
    stackings give (min ρ, max ρ) = (0, 0) for AA, (0, 1) for AB/BA and
    (½, ½) for SP; each atom gets the nearest. AB vs BA: which sublattice of the
    top layer holds the eclipsed atoms (sublattice 0: the one of the layer's first
    atom for graphene, B for hBN).
    """
    layers, layer, other = _pick_layers(atoms, layer, other)
    material = material_of(atoms)
    a = lattice_constant(material, a or atoms.info.get("a"))
    b = a / math.sqrt(3.0)
    sel = np.where(layers == layer)[0]
    oth = np.where(layers == other)[0]
    tree_o, src_o = _neighbour_tree(atoms, layers == other)
    rho, j_o = tree_o.query(atoms.positions[sel, :2], k=1)
    rho = rho / b
    partner = oth[src_o[j_o]]
    xy, src = tiled_xy(atoms.positions[sel], atoms.cell.array, 1)
    _, nn = cKDTree(xy).query(atoms.positions[sel, :2], k=4)
    group = src[nn]  # local index: the atom itself and its 3 neighbours
    rg = rho[group]
    feats = np.stack([rg.min(axis=1), rg.max(axis=1)], axis=1)
    ideal = np.array([[0.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    cls = np.argmin(((feats[:, None, :] - ideal[None]) ** 2).sum(axis=2), axis=1)
    sub = _sublattice(atoms, sel, layers)
    on_top = group[np.arange(len(sel)), np.argmin(rg, axis=1)]
    syms = np.array(atoms.get_chemical_symbols())
    labels = np.empty(len(sel), dtype=object)
    for n in range(len(sel)):
        if cls[n] == 0:
            same = syms[sel[on_top[n]]] == syms[partner[on_top[n]]]
            labels[n] = "AA" if same else "AA'"
        elif cls[n] == 1:
            labels[n] = "AB" if sub[on_top[n]] == 0 else "BA"
        else:
            labels[n] = "SP"
    return sel, labels


def displacements(atoms, reference):
    """Relaxation displacement of every atom against ``reference`` (the rigid
    twist, same atom order), with each layer's mean displacement removed
    (a rigid slide or lift of a layer is not reconstruction).
    Returns ``(u_inplane (N, 2), u_z (N,))``."""
    if len(reference) != len(atoms):
        raise StructureError("reference must have the same atoms as the relaxed structure")
    u = atoms.positions - reference.positions
    # minimum image in-plane, in case one of them was wrapped
    cell = atoms.cell.array
    inv = np.linalg.inv(cell[:2, :2])
    frac = u[:, :2] @ inv
    u[:, :2] = (frac - np.round(frac)) @ cell[:2, :2]
    layers = layers_of(atoms)
    for lay in np.unique(layers):
        m = layers == lay
        u[m] -= u[m].mean(axis=0)
    return u[:, :2], u[:, 2]


# ------------------------------------------------------------------ maps and period
def measure_period(atoms, idx, values, a: float, min_wavelength_lattice: float = 1.8,
                   fundamental_fraction: float = 0.3):
    """Moiré period from the per-atom field ``values`` of atoms ``idx``.

    Fourier amplitudes |Σ δv_i e^{-iG·r_i}| over the reciprocal vectors G of the cell
    with wavelengths longer than ``min_wavelength_lattice``·a; the period is that of
    the *fundamental*: the shortest G whose amplitude is at least
    ``fundamental_fraction`` of the largest. (At small angles the domain-wall network
    can put more weight in the √3 harmonic than in the AA bumps; the lattice's period
    is still the fundamental's.) Converted to the triangular-lattice period
    4π / (√3 |G|). Returns ``(period, G)``."""
    cell2 = atoms.cell.array[:2, :2]
    recip = 2 * math.pi * np.linalg.inv(cell2).T  # rows: b1, b2
    xy = atoms.positions[idx, :2]
    dv = np.asarray(values, float) - np.mean(values)
    g_max = 2 * math.pi / (min_wavelength_lattice * a)
    nmax = int(math.ceil(g_max / min(np.linalg.norm(recip, axis=1)))) + 1
    gs, amps = [], []
    for n1 in range(-nmax, nmax + 1):
        for n2 in range(0, nmax + 1):
            if n2 == 0 and n1 <= 0:
                continue
            g = n1 * recip[0] + n2 * recip[1]
            if np.linalg.norm(g) > g_max:
                continue
            gs.append(g)
            amps.append(abs(np.exp(-1j * (xy @ g)) @ dv))
    if not gs or max(amps) <= 0:
        return float("nan"), None
    amps = np.asarray(amps)
    norms = np.linalg.norm(gs, axis=1)
    strong = np.flatnonzero(amps >= fundamental_fraction * amps.max())
    g = gs[strong[np.argmin(norms[strong])]]
    return 4 * math.pi / (math.sqrt(3) * np.linalg.norm(g)), g


def interpolate_map(atoms, idx, values, n_grid: int = 64):
    """Field on a regular ``n_grid``² grid in fractional coordinates of the cell
    (periodic images used at the edges). Returns ``(X, Y, V)`` (Cartesian grids, Å)."""
    from scipy.interpolate import griddata

    cell = atoms.cell.array
    xy, src = tiled_xy(atoms.positions[idx], cell, 1)
    vals = np.asarray(values)[src]
    f = (np.arange(n_grid) + 0.5) / n_grid
    F1, F2 = np.meshgrid(f, f, indexing="ij")
    X = F1 * cell[0, 0] + F2 * cell[1, 0]
    Y = F1 * cell[0, 1] + F2 * cell[1, 1]
    V = griddata(xy, vals, (X, Y), method="linear")
    return X, Y, V


def aa_nodes(atoms, idx, d, labels=None):
    """Approximate AA node positions: per-atom local maxima of d within a radius of
    one third of the measured period (in-plane Å) in the upper half of the d range,
    merged so that each bump counts once."""
    a = lattice_constant(material_of(atoms))
    period, _ = measure_period(atoms, idx, d, a)
    if not np.isfinite(period):
        return np.zeros((0, 2))
    xy, src = tiled_xy(atoms.positions[idx], atoms.cell.array, 1)
    tree = cKDTree(xy)
    cands = []
    half = 0.5 * (d.min() + d.max())
    for n, p in enumerate(atoms.positions[idx, :2]):
        if d[n] < half:  # a ripple inside a domain, not an AA bump
            continue
        neigh = src[tree.query_ball_point(p, period / 3.0)]
        if d[n] >= d[neigh].max() - 1e-12:
            cands.append(n)
    # one node per bump: a flat top has several equal maxima; keep the highest and drop
    # the others within period / 3 of it (minimum image)
    inv = np.linalg.inv(atoms.cell.array[:2, :2])
    nodes = []
    for n in sorted(cands, key=lambda k: -d[k]):
        p = atoms.positions[idx[n], :2]
        close = False
        for q in nodes:
            f = (p - q) @ inv
            f -= np.round(f)
            close |= bool(np.linalg.norm(f @ atoms.cell.array[:2, :2]) < period / 3.0)
        if not close:
            nodes.append(p)
    return np.array(nodes).reshape(-1, 2)


def aa_node_atoms(atoms, layer: int | None = None, other: int | None = None,
                  a: float | None = None) -> np.ndarray:
    """Atoms at the AA nodes, to pin in a finite-temperature run (seed 000): in
    ``layer`` (default top) the AA-stacked atom most nearly eclipsed by ``other``
    per node (nodes at least a third of the moiré period apart, minimum image), and
    its eclipsing partner in ``other``. Sorted indices (two per node)."""
    layers, layer, other = _pick_layers(atoms, layer, other)
    a = lattice_constant(material_of(atoms), a or atoms.info.get("a"))
    sel, labels = stacking_labels(atoms, layer, other, a)
    oth = np.where(layers == other)[0]
    tree, src = _neighbour_tree(atoms, layers == other)
    rho, j = tree.query(atoms.positions[sel, :2], k=1)
    partner = oth[src[j]]
    theta = atoms.info.get("theta_deg")
    period = formula_period(theta, a) if theta else float(np.linalg.norm(atoms.cell.array[0, :2]))
    cell2 = atoms.cell.array[:2, :2]
    inv = np.linalg.inv(cell2)
    chosen = []
    for k in np.argsort(rho):
        if labels[k] != "AA":
            continue
        p = atoms.positions[sel[k], :2]
        far = True
        for q in chosen:
            f = (p - atoms.positions[sel[q], :2]) @ inv
            f -= np.round(f)
            far &= bool(np.linalg.norm(f @ cell2) >= period / 3.0)
        if far:
            chosen.append(k)
    return np.unique(np.concatenate([sel[chosen], partner[chosen]]).astype(int)) if chosen else np.zeros(0, int)


# ------------------------------------------------------------------ the analysis
def moire_fields(atoms, reference=None, layer: int | None = None, other: int | None = None):
    """Per-atom fields of one layer (default top): positions, interlayer distance,
    stacking label and (with ``reference``) displacements. numpy, not JSON."""
    idx, d = interlayer_distance(atoms, layer, other)
    _, labels = stacking_labels(atoms, layer, other)
    out = {"index": idx, "xy": atoms.positions[idx, :2], "d": d, "stacking": labels}
    if reference is not None:
        u_xy, u_z = displacements(atoms, reference)
        out["u_inplane"] = np.linalg.norm(u_xy[idx], axis=1)
        out["u_inplane_vec"] = u_xy[idx]
        out["u_z"] = u_z[idx]
        out["_u_all"] = (u_xy, u_z)
    return out


def moire_analysis(atoms, reference=None, calc_name: str | None = None,
                   theta_deg: float | None = None, a: float | None = None,
                   material: str | None = None, layer: int | None = None,
                   d_aa_ab: float | None = None, plot_dir: str | None = None,
                   prefix: str = "moire", n_grid: int = 64) -> dict:
    """Moiré structure analysis of a relaxed bilayer (or a layer pair of a multilayer).

    ``reference``: the unrelaxed (rigid twist) structure, same atom order, for the
    displacement maps. ``theta_deg``/``a``: default from ``atoms.info`` and the
    material. ``d_aa_ab``: AA−AB equilibrium distance difference used to scale the
    distance range for the regime (default 0.25 Å graphene, 0.3 Å hBN).

    Result keys: ``analysis``, ``calc_name``, ``material``, ``n_atoms``,
    ``theta_deg``, ``a``, ``d_min``, ``d_max``, ``d_mean``, ``d_range``,
    ``period_measured``, ``period_formula``, ``period_rel_error``,
    ``stacking_fractions`` (label → fraction of the layer's atoms),
    ``domain_fraction``, ``n_aa_nodes``, ``u_inplane_max``, ``u_z_max`` (Å, over
    all atoms; null without ``reference``), ``regime_by_angle``,
    ``regime_by_structure``, ``plots`` (PNG paths).
    """
    material = material_of(atoms, material)
    a = lattice_constant(material, a or atoms.info.get("a"))
    if theta_deg is None:
        theta_deg = atoms.info.get("theta_deg")
    fields = moire_fields(atoms, reference, layer)
    idx, d, labels = fields["index"], fields["d"], fields["stacking"]
    period, _ = measure_period(atoms, idx, d, a)
    formula = formula_period(theta_deg, a) if theta_deg else None
    fractions = {s: float(np.mean(labels == s)) for s in STACKINGS}
    domain = fractions["AB"] + fractions["BA"]
    if material != "graphene":
        domain += fractions["AA'"]
    if d_aa_ab is None:
        d_aa_ab = 0.25 if material == "graphene" else 0.3
    u_in_max = u_z_max = None
    if reference is not None:
        u_xy, u_z = fields["_u_all"]
        u_in_max = float(np.linalg.norm(u_xy, axis=1).max())
        u_z_max = float(np.abs(u_z).max())
    nodes = aa_nodes(atoms, idx, d)
    d_range = float(d.max() - d.min())
    result = {
        "analysis": "moire",
        "calc_name": calc_name or atoms.info.get("relaxed_with"),
        "material": material,
        "n_atoms": len(atoms),
        "theta_deg": float(theta_deg) if theta_deg else None,
        "a": a,
        "d_min": float(d.min()),
        "d_max": float(d.max()),
        "d_mean": float(d.mean()),
        "d_range": d_range,
        "period_measured": float(period),
        "period_formula": formula,
        "period_rel_error": (abs(period - formula) / formula) if formula else None,
        "stacking_fractions": fractions,
        "domain_fraction": float(domain),
        "n_aa_nodes": int(len(nodes)),
        "u_inplane_max": u_in_max,
        "u_z_max": u_z_max,
        "regime_by_angle": regime_from_angle(theta_deg) if theta_deg else None,
        "regime_by_structure": (regime_from_structure(d_range / d_aa_ab, u_in_max, domain)
                                if u_in_max is not None else None),
        "plots": {},
    }
    if plot_dir:
        from moire_al.analysis import plots

        os.makedirs(plot_dir, exist_ok=True)
        result["plots"] = plots.plot_moire_maps(atoms, fields, plot_dir, prefix=prefix,
                                                n_grid=n_grid, nodes=nodes)
    return jsonable(result)


def relax_and_analyse(atoms, calc, calc_name: str | None = None, fmax: float = 1e-3,
                      steps: int = 1000, optimizer: str = "LBFGS",
                      plot_dir: str | None = None, prefix: str = "moire"):
    """Relax a twisted bilayer with ``calc`` and run :func:`moire_analysis` against the
    rigid starting structure. Returns ``(relaxed, {"relax": ..., "moire": ...})``."""
    from moire_al.analysis.relax import relax

    relaxed, rr = relax(atoms, calc, fmax=fmax, steps=steps, optimizer=optimizer,
                        calc_name=calc_name)
    mr = moire_analysis(relaxed, reference=atoms, calc_name=rr["calc_name"],
                        plot_dir=plot_dir, prefix=prefix)
    return relaxed, {"relax": rr, "moire": mr}


def moire_sweep(material: str, calc, calc_name: str | None = None, ms=(1, 2, 3, 4, 5),
                angles=None, fmax: float = 1e-3, steps: int = 1000, d: float = 3.4,
                stacking: str | None = None, plot_dir: str | None = None) -> dict:
    """Relax and analyse twisted bilayers over a set of commensurate angles (``ms``:
    r = 1 indices, or ``angles`` in degrees → nearest commensurate). Gives the data of
    seed 000 Figs 2c/2d (d range, ⟨d⟩, measured vs formula period) and 3c/3d (max
    displacements). Result keys: ``analysis``, ``calc_name``, ``material``,
    ``points`` (one summary per angle: theta_deg, n_atoms, steps, converged,
    d_min, d_max, d_mean, period_measured, period_formula, u_inplane_max, u_z_max,
    domain_fraction, regime_by_angle, regime_by_structure), ``plots``."""
    from moire_al import structures

    name = calc_label(calc, calc_name)
    kw = {}
    if stacking:
        kw["stacking"] = stacking
    specs = [{"angle": x} for x in angles] if angles is not None else [{"m": m} for m in ms]
    points = []
    for spec in specs:
        atoms = structures.twisted_bilayer(material, d=d, **spec, **kw)
        sub = os.path.join(plot_dir, f"theta_{atoms.info['theta_deg']:.3f}") if plot_dir else None
        _, res = relax_and_analyse(atoms, calc, name, fmax=fmax, steps=steps, plot_dir=sub)
        m = res["moire"]
        points.append({
            "theta_deg": m["theta_deg"], "n_atoms": m["n_atoms"],
            "steps": res["relax"]["steps"], "converged": res["relax"]["converged"],
            **{k: m[k] for k in ("d_min", "d_max", "d_mean", "period_measured",
                                 "period_formula", "u_inplane_max", "u_z_max",
                                 "domain_fraction", "regime_by_angle",
                                 "regime_by_structure")},
        })
    points.sort(key=lambda p: p["theta_deg"])
    result = {"analysis": "moire_sweep", "calc_name": name,
              "material": material_of(None, material), "points": points, "plots": {}}
    if plot_dir:
        from moire_al.analysis import plots
        result["plots"] = plots.plot_moire_sweep({name: result}, plot_dir)
    return jsonable(result)
