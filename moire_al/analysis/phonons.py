"""Phonons with phonopy (finite displacements, forces from any ASE calculator).

Band structure along Γ–M–K–Γ of a hexagonal cell; acoustic frequencies at Γ;
imaginary modes (phonopy reports them as negative frequencies) counted beyond a
tolerance. The structure should be relaxed first (``relax_first``).
"""

from __future__ import annotations

import numpy as np

from moire_al.analysis.common import calc_label, jsonable, material_of

THZ_TO_MEV = 4.135667696
THZ_TO_CM1 = 33.35641


def _to_phonopy(atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions(),
                        masses=atoms.get_masses())


def _hex_points(cell):
    """Fractional Γ, M, K of a hexagonal in-plane cell (60° or 120° between a1, a2)."""
    rec = np.linalg.inv(cell).T  # rows b_i / 2π
    bl = np.linalg.norm(rec[0])
    cands = [(1 / 3, 1 / 3), (1 / 3, -1 / 3), (2 / 3, 1 / 3), (1 / 3, 2 / 3), (2 / 3, -1 / 3)]
    k = min(cands, key=lambda c: abs(np.linalg.norm(c[0] * rec[0] + c[1] * rec[1]) - bl / np.sqrt(3)))
    return {"G": [0, 0, 0], "M": [0.5, 0, 0], "K": [k[0], k[1], 0]}


def phonon_bands(atoms, calc, calc_name: str | None = None, supercell=(4, 4, 1),
                 displacement: float = 0.01, npoints: int = 41, symmetrize: bool = True,
                 relax_first: bool = True, fmax: float = 1e-4, steps: int = 2000,
                 imaginary_tol: float = 0.1, symprec: float = 1e-4,
                 plot_path: str | None = None) -> dict:
    """Phonon band structure Γ–M–K–Γ.

    ``symmetrize``: impose the acoustic sum rule / index symmetry on the force
    constants (phonopy). ``imaginary_tol`` (THz): modes below −tol count as
    imaginary.

    Result keys: ``analysis``, ``calc_name``, ``material``, ``n_atoms`` (unit
    cell), ``supercell``, ``n_displacements``, ``labels``, ``label_positions``,
    ``distances`` (list over q), ``frequencies_THz`` (list q × branch),
    ``gamma_frequencies_THz`` (sorted), ``acoustic_gamma_max_abs_THz`` (max |ω| of
    the three modes of smallest |ω| at Γ), ``max_frequency_THz``, ``min_frequency_THz``,
    ``n_imaginary`` (q-points × branches below −tol), ``stable`` (bool),
    ``relax`` (the relaxation summary or None), ``plots``.
    """
    from phonopy.phonon.band_structure import get_band_qpoints

    rr = None
    if relax_first:
        from moire_al.analysis.relax import relax
        atoms, rr = relax(atoms, calc, fmax=fmax, steps=steps)
    ph = force_constants(atoms, calc, supercell, displacement, symmetrize, symprec)
    pts = _hex_points(atoms.cell.array)
    path = [[pts["G"], pts["M"], pts["K"], pts["G"]]]
    labels = ["Γ", "M", "K", "Γ"]
    qpoints = get_band_qpoints(path, npoints=npoints)
    ph.run_band_structure(qpoints, path_connections=[False], labels=labels)
    bs = ph.get_band_structure_dict()
    dist = np.concatenate(bs["distances"])
    freqs = np.concatenate(bs["frequencies"])
    label_pos = [float(bs["distances"][0][0])]
    # segment boundaries: q-points equal to the path corners
    qs = np.concatenate(bs["qpoints"])
    for corner in (pts["M"], pts["K"]):
        j = int(np.argmin(np.linalg.norm(qs - np.array(corner), axis=1)))
        label_pos.append(float(dist[j]))
    label_pos.append(float(dist[-1]))
    ph.run_qpoints([[0, 0, 0]])
    g = np.sort(ph.get_qpoints_dict()["frequencies"][0])
    n_imag = int((freqs < -imaginary_tol).sum())
    result = {
        "analysis": "phonons",
        "calc_name": calc_label(calc, calc_name),
        "material": material_of(atoms),
        "n_atoms": len(atoms),
        "supercell": list(supercell),
        "n_displacements": len(ph.displacements),
        "symmetrized": bool(symmetrize),
        "labels": labels,
        "label_positions": label_pos,
        "distances": dist.tolist(),
        "frequencies_THz": freqs.tolist(),
        "gamma_frequencies_THz": g.tolist(),
        "acoustic_gamma_max_abs_THz": float(np.sort(np.abs(g))[:3].max()),
        "max_frequency_THz": float(freqs.max()),
        "min_frequency_THz": float(freqs.min()),
        "n_imaginary": n_imag,
        "imaginary_tol_THz": float(imaginary_tol),
        "stable": n_imag == 0,
        "relax": rr,
        "plots": {},
    }
    if plot_path:
        from moire_al.analysis import plots
        result["plots"]["bands"] = plots.plot_phonons({result["calc_name"]: result}, plot_path)
    return jsonable(result)


def force_constants(atoms, calc, supercell=(4, 4, 1), displacement: float = 0.01,
                    symmetrize: bool = True, symprec: float = 1e-4):
    """A phonopy object with force constants from finite displacements of ``atoms``
    (as given: relax it first) evaluated with ``calc``. ``symmetrize`` removes the
    mean force of each displaced supercell and imposes the sum rules."""
    from ase import Atoms
    from phonopy import Phonopy

    ph = Phonopy(_to_phonopy(atoms), supercell_matrix=np.diag(supercell),
                 primitive_matrix=np.eye(3), symprec=symprec)
    ph.generate_displacements(distance=displacement)
    forces = []
    for sc in ph.supercells_with_displacements:
        a = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        if "layer" in atoms.arrays:
            # supercell atoms are ordered by unit-cell atom, each repeated n_cells times
            n_cells = len(sc) // len(atoms)
            a.arrays["layer"] = np.repeat(atoms.arrays["layer"], n_cells)
        a.info["material"] = material_of(atoms)
        a.calc = calc
        f = a.get_forces()
        forces.append(f - f.mean(axis=0) if symmetrize else f)
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    if symmetrize:
        ph.symmetrize_force_constants()
    return ph


def phonon_dos(atoms, calc, calc_name: str | None = None, supercell=(1, 1, 1), mesh=(1, 1, 1),
               sigma: float = 0.3, freq_pitch: float = 0.05, displacement: float = 0.01,
               symmetrize: bool = True, relax_first: bool = True, fmax: float = 1e-4,
               steps: int = 2000, symprec: float = 1e-4) -> dict:
    """Harmonic phonon DOS (phonopy, Gaussian smearing ``sigma`` THz) on a Γ-centred
    ``mesh``, normalised to ∫ g dν = 1 (over ν ≥ 0: the weight of imaginary modes,
    reported, is left out).

    The default (the cell itself as supercell, Γ only) gives exactly the normal
    modes an MD run of that periodic cell can hold, the harmonic counterpart of its
    vibrational DOS. Result keys: ``analysis``, ``calc_name``, ``n_atoms``,
    ``supercell``, ``mesh``, ``sigma_THz``, ``frequency_THz``, ``dos``,
    ``max_frequency_THz``, ``mean_frequency_THz``, ``imaginary_weight``, ``relax``.
    """
    rr = None
    if relax_first:
        from moire_al.analysis.relax import relax
        atoms, rr = relax(atoms, calc, fmax=fmax, steps=steps)
    ph = force_constants(atoms, calc, supercell, displacement, symmetrize, symprec)
    ph.run_mesh(list(mesh), is_gamma_center=True)
    freqs = np.asarray(ph.mesh.frequencies).ravel()
    weights = np.repeat(np.asarray(ph.mesh.weights, float), 3 * len(atoms))
    hi = float(freqs.max()) + 4 * sigma
    nu = np.arange(0.0, hi + freq_pitch, freq_pitch)
    g = (weights[None, :] * np.exp(-0.5 * ((nu[:, None] - freqs[None, :]) / sigma) ** 2)).sum(axis=1)
    total = np.trapezoid(g, nu)
    g = g / total if total > 0 else g
    imag = float(weights[freqs < -0.1].sum() / weights.sum())
    return jsonable({
        "analysis": "phonon_dos", "calc_name": calc_label(calc, calc_name), "n_atoms": len(atoms),
        "supercell": list(supercell), "mesh": list(mesh), "sigma_THz": sigma,
        "frequency_THz": nu.tolist(), "dos": g.tolist(), "max_frequency_THz": float(freqs.max()),
        "mean_frequency_THz": float(np.trapezoid(nu * g, nu)), "imaginary_weight": imag, "relax": rr,
    })
