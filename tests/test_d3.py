"""The package's D3(BJ) (compiled kernel) against the dftd3 library."""

import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr

from moire_al.models import d3
import synthetic as S

LIBRARY_CUTOFFS = {"cutoff": 60 * Bohr, "cn_cutoff": 40 * Bohr, "chain_cutoff": 40 * Bohr}   # dftd3's own


def _pairs():
    """(name, structure a, structure b): energy differences the model relies on."""
    ab = [[0, 0], [1.42, 0]]
    return [
        ("bilayer AA vs AB", S.stacked("graphene", 2, 4, d=3.4, shifts=[[0, 0], [0, 0]]),
         S.stacked("graphene", 2, 4, d=3.4, shifts=ab)),
        ("bilayer 3.2 vs 3.6 Å", S.stacked("graphene", 2, 4, d=3.2, shifts=ab),
         S.stacked("graphene", 2, 4, d=3.6, shifts=ab)),
        ("trilayer ABA vs ABC", S.stacked("graphene", 3, 4, d=3.35, shifts=[[0, 0], [1.42, 0], [0, 0]]),
         S.stacked("graphene", 3, 4, d=3.35, shifts=[[0, 0], [1.42, 0], [2.84, 0]])),
        ("hBN AA' 3.3 vs AB 3.5 Å", S.stacked("hbn", 2, 4, d=3.3, shifts=[[0, 0], [0, 0]]),
         S.stacked("hbn", 2, 4, d=3.5, shifts=[[0, 0], [1.45, 0]])),
        ("rattled 0.1 Å, two draws", S.stacked("graphene", 2, 4, d=3.4, shifts=ab, rattle=0.1, seed=1),
         S.stacked("graphene", 2, 4, d=3.4, shifts=ab, rattle=0.1, seed=2)),
    ]


def test_kernel_reproduces_dftd3_at_its_cutoffs():
    """Same cutoffs as the library: the same numbers to round-off (C, B, N; periodic)."""
    for _, a, b in _pairs()[3:]:
        for at in (a, b):
            e0, f0, s0 = d3.dftd3_results(at)
            e1, f1, s1 = d3.kernel_results(at, **LIBRARY_CUTOFFS)
            assert e1 == pytest.approx(e0, rel=1e-12, abs=1e-10)
            np.testing.assert_allclose(f1, f0, atol=1e-10)
            np.testing.assert_allclose(s1, s0, atol=1e-12)


def test_default_cutoffs_within_the_bounds():
    """≤ 1e-4 eV/Å forces and ≤ 0.01 meV/atom in energy differences, stress close."""
    for name, a, b in _pairs():
        ra, rb = d3.dftd3_results(a), d3.dftd3_results(b)
        ka, kb = d3.kernel_results(a), d3.kernel_results(b)
        dde = 1000 * abs((ka[0] - kb[0]) - (ra[0] - rb[0])) / len(a)
        assert dde <= 0.01, name
        for k, r in ((ka, ra), (kb, rb)):
            assert np.abs(k[1] - r[1]).max() <= 1e-4, name
            assert np.abs(k[2] - r[2]).max() <= 5e-5, name    # eV/Å³ (measured ≤ 2e-5)
        assert abs(ka[0] - ra[0]) / len(a) < 5e-4        # the absolute offset is small too


def test_open_and_slab_boundaries_match_dftd3():
    mol = Atoms("C2N2B2", positions=[[0, 0, 0], [1.4, 0, 0], [0, 1.5, 0.2], [2.1, 1.2, 0], [-1, 0.7, 1.2],
                                     [3.0, 0.3, -0.8]])
    e0, f0, s0 = d3.dftd3_results(mol)
    e1, f1, s1 = d3.kernel_results(mol, **LIBRARY_CUTOFFS)
    assert s0 is None and s1 is None
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0, atol=1e-12)
    slab = S.stacked("graphene", 2, 3, d=3.4, rattle=0.05, seed=3)
    slab.pbc = [True, True, False]
    e0, f0, _ = d3.dftd3_results(slab)
    e1, f1, _ = d3.kernel_results(slab, **LIBRARY_CUTOFFS)
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0, atol=1e-10)


def test_kept_pair_list_equals_a_fresh_one_and_forces_are_gradients():
    """Atoms moved within the skin (some across the cell boundary): the kept list gives what
    a new list gives; forces are minus the energy's finite-difference gradient."""
    at = S.stacked("hbn", 2, 3, d=3.3, rattle=0.05, seed=4)
    a0 = at.cell.array[0]
    at.positions -= (at.get_scaled_positions(wrap=False)[0, 0] - 0.002) * a0   # atom 0 at the edge
    ev = d3.D3Evaluator(skin=1.0)
    ev.results(at)
    moved = at.copy()
    rng = np.random.default_rng(0)
    moved.positions += rng.normal(0, 0.05, moved.positions.shape).clip(-0.1, 0.1)
    k = 0
    moved.positions[k] = at.positions[k] - 0.1 * a0 / np.linalg.norm(a0)   # across the boundary
    assert moved.get_scaled_positions(wrap=False)[k, 0] < 0
    e1, f1, s1 = ev.results(moved)
    assert ev.last_stats == {"calls": 2, "rebuilds": 1}
    e2, f2, s2 = d3.kernel_results(moved)
    assert e1 == pytest.approx(e2, rel=1e-13)
    np.testing.assert_allclose(f1, f2, atol=1e-12)
    np.testing.assert_allclose(s1, s2, atol=1e-14)
    h = 1e-4
    for i, c in ((k, 0), (5, 2), (11, 1)):
        p, m = moved.copy(), moved.copy()
        p.positions[i, c] += h
        m.positions[i, c] -= h
        fd = -(d3.kernel_results(p)[0] - d3.kernel_results(m)[0]) / (2 * h)
        assert fd == pytest.approx(f1[i, c], abs=1e-7)


def test_d3_results_uses_the_kernel_and_reports_it():
    assert d3.backend() == "kernel"
    s = d3.d3_settings()
    assert s["backend"] == "kernel" and s["three_body"] is False and s["cutoff_A"] == d3.DISP_CUTOFF


def test_threads_change_no_result():
    """The kernel's threads split the atoms: 1, 2 and 3 threads give the same numbers (hBN,
    two species, rattled; a kept list evaluated again after a move)."""
    at = S.stacked("hbn", 2, 4, d=3.3, shifts=[[0, 0], [1.45, 0]], rattle=0.08, seed=5)
    ref = d3.D3Evaluator(threads=1).results(at)
    for nt in (2, 3):
        ev = d3.D3Evaluator(threads=nt)
        e, f, s = ev.results(at)
        assert e == pytest.approx(ref[0], rel=1e-14)
        np.testing.assert_allclose(f, ref[1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(s, ref[2], rtol=0, atol=1e-14)
    moved = at.copy()
    moved.positions += 0.05
    e1, f1, _ = d3.D3Evaluator(threads=1).results(moved)
    e2, f2, _ = ev.results(moved)
    assert ev.last_stats == {"calls": 2, "rebuilds": 1}
    assert e2 == pytest.approx(e1, rel=1e-14)
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-12)


def test_skewed_cells_and_four_elements_match_dftd3():
    """The fractional-bin half list keeps every pair once in any cell: an oblique, tilted cell
    shorter than the cutoff in every direction, and four elements (the kernel's general path)."""
    from ase.build import bulk

    tilted = S.stacked("hbn", 2, 2, d=3.3, shifts=[[0, 0], [0.7, 0.3]], rattle=0.1, seed=6)
    cell = tilted.cell.array.copy()
    cell[2] = [2.1, -1.3, 7.5]                                  # c tilted, short
    tilted.set_cell(cell, scale_atoms=False)
    mono = bulk("C", "diamond", a=3.57) * (1, 1, 2)
    mono.set_cell(mono.cell.array + [[0, 0, 0], [0.4, 0, 0], [0.3, -0.5, 0]], scale_atoms=True)
    mono.rattle(0.05, seed=7)
    mixed = mono.copy()
    mixed.numbers[[1, 2, 3]] = [5, 7, 1]                        # C, B, N, H
    for at in (tilted, mono, mixed):
        e0, f0, s0 = d3.dftd3_results(at)
        e1, f1, s1 = d3.kernel_results(at, **LIBRARY_CUTOFFS)
        assert e1 == pytest.approx(e0, rel=1e-12)
        np.testing.assert_allclose(f1, f0, atol=1e-10)
        np.testing.assert_allclose(s1, s0, atol=1e-12)
