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
