"""Vacancy migration by the nudged elastic band method (ASE, climbing image).

The path: remove atom ``site`` of ``layer`` (the vacancy); one of its in-layer
nearest neighbours ``hop`` jumps into the empty site, so the final state is the
vacancy at the neighbour's old position. Both end points are relaxed with fixed
cell; images are interpolated by IDPP and relaxed with the climbing image on.
"""

from __future__ import annotations

import numpy as np

from moire_al.analysis.common import calc_label, jsonable, layers_of


def _central_atom(atoms, layer):
    layers = layers_of(atoms)
    idx = np.where(layers == layer)[0]
    centre = atoms.cell.array[:2, :2].sum(axis=0) / 2
    return int(idx[np.argmin(np.linalg.norm(atoms.positions[idx, :2] - centre, axis=1))])


def vacancy_endpoints(atoms, layer: int | None = None, site: int | None = None,
                      hop: int | None = None):
    """Initial and final vacancy structures for a hop; also returns the indices
    ``(site, hop)`` in the pristine numbering."""
    layers = layers_of(atoms)
    if layer is None:
        layer = int(layers.max())
    if site is None:
        site = _central_atom(atoms, layer)
    if hop is None:
        same = np.where((layers == layer) & (np.arange(len(atoms)) != site))[0]
        d = atoms.get_distances(site, same, mic=True)
        hop = int(same[np.argmin(d)])
    initial = atoms.copy()
    target = initial.positions[site].copy()
    # hop atom moved by the minimum-image vector to the vacant site
    vec = atoms.get_distance(hop, site, mic=True, vector=True)
    final = atoms.copy()
    final.positions[hop] = final.positions[hop] + vec
    del initial[site]
    del final[site]
    initial.info["vacancy_site"] = site
    final.info["vacancy_site"] = hop
    _ = target
    return initial, final, site, hop


def vacancy_migration(atoms, calc, calc_name: str | None = None, layer: int | None = None,
                      site: int | None = None, hop: int | None = None, n_images: int = 5,
                      climb: bool = True, fmax: float = 0.05, steps: int = 500,
                      relax_fmax: float = 1e-3, plot_path: str | None = None, images_out: list | None = None) -> dict:
    """NEB of a vacancy hop in ``atoms`` (pristine, e.g. a relaxed twisted bilayer).

    Result keys: ``analysis``, ``calc_name``, ``n_atoms`` (with vacancy), ``layer``,
    ``site``, ``hop``, ``n_images`` (total, with end points), ``climb``,
    ``converged``, ``steps``, ``energies`` (eV, absolute), ``energies_rel`` (eV,
    relative to the initial state), ``path_coordinate`` (Å, cumulative image
    distance), ``barrier`` (forward, eV), ``barrier_reverse`` (eV),
    ``delta_e`` (final − initial, eV), ``endpoints_converged`` (list), ``plots``.
    ``images_out``: a list that receives copies of the final images (end points
    included, no calculator; ``info["neb_image"]`` their index), e.g. to label them.
    """
    from ase.mep import NEB
    from ase.optimize import FIRE

    from moire_al.analysis.relax import relax

    layers = layers_of(atoms)
    if layer is None:
        layer = int(layers.max())
    initial, final, site, hop = vacancy_endpoints(atoms, layer, site, hop)
    initial, ri = relax(initial, calc, fmax=relax_fmax, steps=2000)
    final, rf = relax(final, calc, fmax=relax_fmax, steps=2000)
    images = [initial]
    for _ in range(n_images):
        im = initial.copy()
        im.calc = calc
        images.append(im)
    images.append(final)
    initial.calc = calc
    final.calc = calc
    neb = NEB(images, climb=climb, allow_shared_calculator=True, method="improvedtangent")
    neb.interpolate(method="idpp", mic=True)
    opt = FIRE(neb, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    energies = np.array([float(im.get_potential_energy()) for im in images])
    coord = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        dv = b.positions - a.positions
        cell = a.cell.array
        frac = np.linalg.solve(cell.T, dv.T).T
        frac[:, :2] -= np.round(frac[:, :2])
        coord.append(coord[-1] + float(np.linalg.norm(frac @ cell)))
    rel = energies - energies[0]
    if images_out is not None:
        for k, im in enumerate(images):
            c = im.copy()
            c.calc = None
            c.info.update(neb_image=k, generator="neb_vacancy_image")
            images_out.append(c)
    result = {
        "analysis": "neb_vacancy",
        "calc_name": calc_label(calc, calc_name),
        "n_atoms": len(initial),
        "layer": int(layer),
        "site": int(site),
        "hop": int(hop),
        "n_images": len(images),
        "climb": bool(climb),
        "converged": converged,
        "steps": int(opt.get_number_of_steps()),
        "energies": energies.tolist(),
        "energies_rel": rel.tolist(),
        "path_coordinate": coord,
        "barrier": float(rel.max()),
        "barrier_reverse": float(energies.max() - energies[-1]),
        "delta_e": float(energies[-1] - energies[0]),
        "endpoints_converged": [ri["converged"], rf["converged"]],
        "plots": {},
    }
    if plot_path:
        from moire_al.analysis import plots
        result["plots"]["profile"] = plots.plot_neb({result["calc_name"]: result}, plot_path)
    return jsonable(result)
