"""Design rows and committee evaluation by parts equal ace-jax's own Jacobian paths."""

import equinox as eqx
import jax
import numpy as np
import pytest

from moire_al.models import basis as B
import synthetic as S


@eqx.filter_jit
def _acejax_rows(model, rij, zi, zj, mask):
    return model.edge_jacobian_dense(rij, zi, zj, mask)


@eqx.filter_jit
def _acejax_committee(model, rij, zi, zj, mask, node_z, CB, CP):
    return model.committee_edge_grad_dense(rij, zi, zj, mask, node_z, CB, CP)


@pytest.mark.parametrize("elements,material", [([6], "graphene"), ([5, 7], "hbn")])
def test_rows_and_committee_by_parts_equal_acejax(elements, material):
    b = B.ACEBasis(elements, 2, 6, 5.5)
    at = S.stacked(material, 2, 3, d=3.3, shifts=[[0, 0], [1.4, 0]], rattle=0.08, seed=2)
    g = b.graph(at)
    C = np.random.default_rng(1).normal(size=(b.L, 3)).reshape(b.NZ, b.D, 3)
    CB, CP = jax.numpy.asarray(C[:, : b.n_B]), jax.numpy.asarray(C[:, b.n_B:])
    for _, _, (rij, zi, zj, m, zc) in b._chunks(g):
        X, J = B._rows_kernel(b.model, rij, zi, zj, m)
        X0, J0 = _acejax_rows(b.model, rij, zi, zj, m)
        np.testing.assert_allclose(np.asarray(X), np.asarray(X0), rtol=0, atol=1e-12 * np.abs(X0).max())
        J0 = np.asarray(J0).reshape(np.asarray(J).shape)
        np.testing.assert_allclose(np.asarray(J), J0, rtol=0, atol=1e-12 * np.abs(J0).max())
        assert np.abs(J0).max() > 0
        if b.NZ > 1:      # the committee kernel shares _jacobian_parts: one species suffices
            continue
        _, T = B._eval_kernel(b.model, rij, zi, zj, m, zc, CB, CP)
        T0 = np.asarray(_acejax_committee(b.model, rij, zi, zj, m, zc, CB, CP))
        np.testing.assert_allclose(np.asarray(T), T0, rtol=0, atol=1e-12 * np.abs(T0).max())


@pytest.mark.parametrize("elements,material,pbc,order", [([6], "graphene", True, 3), ([5, 7], "hbn", True, 3),
                                                         ([6], "graphene", False, 3), ([6], "graphene", True, 2),
                                                         ([6], "graphene", True, 4)])
def test_compiled_rows_equal_jax_rows(elements, material, pbc, order):
    """The compiled kernel (edge factors + product basis + dB/dA, csrc/ace_rows.cpp) gives the
    JAX rows: energy, forces and virial, order-3 products (sparse coupling), order 4 (the
    kernel's general product loop) and order 2 (a small basis: dense A2B), one and two
    species, 3D and slab."""
    b = B.ACEBasis(elements, order, 6, 5.5)
    assert b.model.a2b_sparse == (order >= 3)
    assert b.native, "the compiled rows must build on the test machine"
    at = S.stacked(material, 2, 3, d=3.3, shifts=[[0, 0], [1.1, 0.3]], rattle=0.1, seed=3)
    if not pbc:
        at.pbc = [True, True, False]
    jax_rows = b.structure_rows(at, native=False)
    c_rows = b.structure_rows(at, native=True)
    assert np.diff(b._plan["aa_off"]).max() == order        # products of `order` factors reached
    assert (c_rows[2] is None) == (not pbc) == (jax_rows[2] is None)
    for x, y in zip(jax_rows, c_rows):
        if x is None:
            continue
        assert np.abs(x).max() > 0
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-10 * np.abs(x).max())
    # the force rows written into a wider array (the fit's block of rows, stride L + 2): the
    # same rows, the extra columns untouched, stale contents overwritten
    for native, want in ((True, c_rows[1]), (False, jax_rows[1])):
        wide = np.full((3 * len(at), b.L + 2), 7.0)
        PsiF = b.structure_rows(at, native=native, out=wide)[1]
        assert np.shares_memory(PsiF, wide)
        np.testing.assert_array_equal(PsiF, want)
        np.testing.assert_array_equal(wide[:, b.L:], 7.0)


@pytest.mark.parametrize("elements,material", [([6], "graphene"), ([5, 7], "hbn")])
def test_threaded_rows_and_committee_kernel_equal_the_serial_rows(elements, material):
    """The rows on 2 and 3 threads (per-thread outputs added in thread order) equal one
    thread's to 1e-12; each pair's edge factors computed once (reverse edge: radials shared,
    harmonics by parity) give the rows of every edge computed alone; the committee kernel
    (dB/dA contracted with C per site, no force rows) gives the rows times C."""
    b = B.ACEBasis(elements, 3, 6, 5.5)
    at = S.stacked(material, 2, 3, d=3.3, shifts=[[0, 0], [1.1, 0.3]], rattle=0.1, seed=5)
    g = b.graph(at)
    rev = g.reverse_edges()
    assert rev is not None and np.array_equal(rev[rev], np.arange(len(rev)))
    v = g.rij[g.mask]
    np.testing.assert_array_equal(v[rev], -v)
    b.threads_ = 1
    serial = b._native_rows(g)
    g_all = b.graph(at)
    g_all.shift = None                       # no reverse edges: every edge's factors computed
    for rows in (b._native_rows(g_all), b._native_rows(g, threads=2), b._native_rows(g, threads=3)):
        for x, y in zip(serial, rows):
            assert np.abs(x).max() > 0
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-12 * np.abs(x).max())
    C = np.random.default_rng(2).normal(size=(b.L, 9))         # 9 models: padded to 16 inside
    b.score_by_rows = True
    want = b.evaluate(at, C, graph=g)
    b.score_by_rows = False
    for t in (1, 2):
        b.threads_ = t
        got = b.evaluate(at, C, graph=g)
        for x, y in zip(want, got):
            assert np.abs(x).max() > 0
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-12 * np.abs(x).max())


def test_pipelined_normal_equations_equal_the_serial_loop():
    """The fit's normal equations on 2 threads (rows of several structures at once, the largest
    first) equal one thread's bit for bit, and the GIL-free dsyrk equals scipy's wrapper bit
    for bit."""
    from scipy.linalg.blas import dsyrk

    from moire_al.labelling.reference import reference_calculator
    from moire_al.models.ace import ACEModel
    from moire_al.models.blr import syrk_upper

    Pw = np.random.default_rng(3).normal(size=(300, 57))
    np.testing.assert_array_equal(syrk_upper(Pw), dsyrk(1.0, Pw.T, trans=0, lower=0))
    data = S.label(S.random_set("hbn", 8, seed=6, n=2, layers=(1, 2), rattle=(0.02, 0.08)),
                   reference_calculator("hbn"), skip_failures=True)
    m = ACEModel(order=2, totaldegree=6, d3=False, committee_size=2)
    m.fit_plan(data)
    out = []
    for t in (2, 1):          # 2 first: the threads also race to load the kernel (ACEBasis.native)
        m.basis_.threads_ = t
        out.append(m.normal_equations(data, block_rows=100))
    c, a = out
    assert len(m.fit_blocks(data, 100)) >= 3 and a.n_obs == c.n_obs
    for x, y in ((a.A, c.A), (a.A_lo, c.A_lo), (a.b, c.b), (a.b_lo, c.b_lo)):
        np.testing.assert_array_equal(x, y)
    assert np.abs(a.A).max() > 0 and (a.yWy, a.log_w2) == (c.yWy, c.log_w2)


def test_compiled_compensated_sum_equals_numpy_and_the_fit_uses_it(monkeypatch):
    """blr.two_sum_add (csrc/blr.cpp) gives numpy's TwoSum bit for bit, C- and Fortran-ordered,
    with a threaded split; the normal equations are Fortran-ordered so the fit takes the
    kernel, and with numpy's path forced they come out the same bit for bit."""
    from moire_al.labelling.reference import reference_calculator
    from moire_al.models import blr
    from moire_al.models.ace import ACEModel

    assert blr._two_sum_kernel() is not None
    rng = np.random.default_rng(4)
    for order in ("C", "F"):
        hi = np.asarray(rng.normal(size=(300, 301)) * 1e9, order=order)
        lo = np.asarray(rng.normal(size=(300, 301)) * 1e-8, order=order)
        x = np.asarray(rng.normal(size=(300, 301)), order=order)
        s, e = blr._two_sum(hi, x)
        h2, l2 = hi.copy(order="K"), lo.copy(order="K")
        blr.two_sum_add(h2, l2, x)
        np.testing.assert_array_equal(h2, s)
        np.testing.assert_array_equal(l2, lo + e)
        assert np.any(e != 0)                     # the test would see a lost error term
    # upper=True (a syrk_upper product: zero strictly lower triangle) passes over the upper
    # triangle only, with the full pass' numbers everywhere; 400 x 400 takes the threaded split
    for n in (7, 400):
        hi = np.asfortranarray(rng.normal(size=(n, n)) * 1e9)
        lo = np.asfortranarray(rng.normal(size=(n, n)) * 1e-8)
        x = np.asfortranarray(np.triu(rng.normal(size=(n, n))))
        full = hi.copy(order="F"), lo.copy(order="F")
        blr.two_sum_add(*full, x)
        up = hi.copy(order="F"), lo.copy(order="F")
        blr.two_sum_add(*up, x, upper=True)
        for a, b in zip(full, up):
            np.testing.assert_array_equal(a, b)
        assert np.any(full[1] != lo)
    data = S.label(S.random_set("hbn", 6, seed=7, n=2, layers=(1, 2), rattle=(0.02, 0.08)),
                   reference_calculator("hbn"), skip_failures=True)
    m = ACEModel(order=2, totaldegree=6, d3=False, committee_size=2)
    m.fit_plan(data)
    fast = m.normal_equations(data, block_rows=100)
    assert fast.A.flags.f_contiguous
    calls = []
    monkeypatch.setattr(blr, "_two_sum_kernel", lambda upper=False: calls.append(upper))   # None: numpy
    slow = m.normal_equations(data, block_rows=100)
    assert calls and all(calls)       # each a block's A (b is below the kernel's size): its upper triangle
    for x, y in ((fast.A, slow.A), (fast.A_lo, slow.A_lo), (fast.b, slow.b), (fast.b_lo, slow.b_lo)):
        np.testing.assert_array_equal(x, y)


def test_totals_mirror_the_upper_triangle_as_the_expression_did():
    """NormalEquations.totals fills the zero lower triangle in place, tile by tile, with the
    numbers of A + triu(A, 1).T (a size that is no multiple of the tile, both layouts), and
    leaves a matrix whose lower triangle is not zero as it is."""
    from moire_al.models import blr

    rng = np.random.default_rng(11)
    for n, order in ((7, "F"), (300, "F"), (300, "C")):
        U = np.asarray(np.triu(rng.normal(size=(n, n))), order=order)
        want = U + np.triu(U, 1).T
        got = U.copy(order="K")
        assert blr._mirror_upper(got, block=64)
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(got, got.T)
    full = rng.normal(size=(130, 130))
    kept = full.copy()
    assert not blr._mirror_upper(kept, block=64)
    np.testing.assert_array_equal(kept, full)
    neq = blr.NormalEquations(np.asfortranarray(np.triu(full)), np.zeros(130), 1.0, 1)
    A = neq.totals()[0]
    np.testing.assert_array_equal(A, np.triu(full) + np.triu(full, 1).T)


def test_committee_scoring_compiled_equals_todays_path(monkeypatch):
    """σ_E, σ_F and the relative force uncertainty of the loop's scoring (committee_scores)
    from the committee kernel equal those of the compiled rows times the K+1 coefficient
    vectors and of the JAX path to 1e-8."""
    from moire_al.labelling.reference import reference_calculator
    from moire_al.models.ace import ACEModel
    from moire_al.workflows.loop import committee_scores

    train = S.label(S.random_set("graphene", 6, seed=4, n=3), reference_calculator("graphene"))
    model = ACEModel(order=2, totaldegree=6, committee_size=8, d3=False).fit(train)
    cands = S.random_set("graphene", 3, seed=5, n=3, rattle=(0.05, 0.15))
    assert model.basis_.native
    model.basis_.threads_ = 2                  # two candidates at a time
    rel, sig = committee_scores(model, cands)
    p_new = model.predict_one(cands[0], committee=True, stress=True, d3=False)
    model.basis_.threads_ = 1                  # the candidates one after the other
    np.testing.assert_array_equal(committee_scores(model, cands)[1], sig)
    model.basis_.threads_ = None
    monkeypatch.setattr(model.basis_, "score_by_rows", True)     # the compiled rows times C
    rel_r, sig_r = committee_scores(model, cands)
    np.testing.assert_allclose(sig, sig_r, rtol=1e-8, atol=0)
    np.testing.assert_allclose(rel, rel_r, rtol=1e-8, atol=0)
    monkeypatch.setattr(model.basis_, "_native_ok", False)      # today's path: JAX per-edge gradients
    rel0, sig0 = committee_scores(model, cands)
    p_old = model.predict_one(cands[0], committee=True, stress=True, d3=False)
    assert rel0.min() > 0 and sig0.min() > 0
    np.testing.assert_allclose(rel, rel0, rtol=1e-8, atol=0)
    np.testing.assert_allclose(sig, sig0, rtol=1e-8, atol=0)
    for k in ("energy", "energy_std", "forces", "forces_std", "rel_force_unc", "stress", "stress_std"):
        np.testing.assert_allclose(p_new[k], p_old[k], rtol=1e-8, atol=1e-12 * np.abs(p_old[k]).max())
