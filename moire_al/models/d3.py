"""D3(BJ) dispersion for PBE, through the ``dftd3`` package (simple-dftd3).

The model's energy is E = E_D3(BJ, PBE) + Σ_i ε_ACE(env_i); this module supplies the
first term (energy, forces, stress in eV, eV/Å, eV/Å³ with ASE's sign).
"""

from __future__ import annotations

import numpy as np

from moire_al.errors import ModelError

#: Two-body D3(BJ) (no Axilrod-Teller-Muto three-body term), as VASP's IVDW = 12 and
#: CP2K's default DFTD3(BJ) compute it: D3 subtracted from those labels must match it.
D3_SETTINGS = {"method": "PBE", "damping": "d3bj", "three_body": False, "package": "dftd3"}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dftd3")
    except Exception:  # pragma: no cover
        return "unknown"


def d3_settings() -> dict:
    return dict(D3_SETTINGS, version=_version())


def check_d3() -> None:
    """Raise ModelError with a clear message when D3 cannot be evaluated here."""
    try:
        from ase.build import bulk

        d3_results(bulk("C", "diamond", a=3.57))
    except ModelError:
        raise
    except Exception as exc:  # pragma: no cover - depends on the install
        raise ModelError(f"D3(BJ) dispersion is unavailable ({type(exc).__name__}: {exc}); "
                         "install the 'dftd3' package or build the model with d3=False") from exc


def d3_results(atoms, name: str = "", method: str = "pbe"):
    """(energy, forces (N, 3), stress (6,) or None) of two-body D3(BJ) for ``atoms``, with
    the damping parameters of the functional ``method`` (PBE for the model; the GPAW
    labeller passes its xc). The one D3 implementation of moire-al."""
    try:
        from dftd3.interface import DispersionModel, RationalDampingParam
    except Exception as exc:
        raise ModelError(f"D3(BJ) dispersion is unavailable: cannot import dftd3 ({exc}); "
                         "install 'dftd3' or use d3=False") from exc
    from ase.units import Bohr, Hartree

    pbc = np.asarray(atoms.pbc, bool)
    periodic = pbc.any()
    try:
        disp = DispersionModel(
            numbers=np.asarray(atoms.numbers),
            positions=np.asarray(atoms.positions) / Bohr,
            lattice=np.asarray(atoms.cell.array) / Bohr if periodic else None,
            periodic=pbc if periodic else None,
        )
        res = disp.get_dispersion(RationalDampingParam(method=str(method).lower(), atm=False), grad=True)
    except Exception as exc:
        raise ModelError(f"structure {name or '?'}: D3(BJ) evaluation failed: {exc}") from exc
    energy = float(res["energy"]) * Hartree
    forces = -np.asarray(res["gradient"]) * Hartree / Bohr
    stress = None
    if pbc.all() and atoms.cell.rank == 3:
        vol = abs(np.linalg.det(atoms.cell.array))
        sig = np.asarray(res["virial"]) * Hartree / vol    # dE/dε, eV; ASE stress = (1/V) dE/dε
        from ase.stress import full_3x3_to_voigt_6_stress

        stress = full_3x3_to_voigt_6_stress(sig)
    return energy, forces, stress
