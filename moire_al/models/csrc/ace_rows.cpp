// Linear-ACE design rows of one structure: energy row, force rows and the (unsymmetrised)
// virial rows, from per-edge radial and harmonic factors (computed by the caller).
//
// Per site i (edges s in [off[i], off[i+1]), vector v_s = r_j - r_i, unit u_s):
//   A_a   = sum_s R_s[ar_a] Y_s[ay_a]
//   AA_c  = prod_p A[f_{c,p}]                   (product basis, order 1..k)
//   B_b   = sum_t val_t AA[col_t]                (coupling triplets, any order)
//   dA_a/dv_s = R'_s[ar_a] Y_s[ay_a] u_s + R_s[ar_a] grad Y_s[ay_a]
//   dB_b/dv_s = sum_{(b,a)} (sum_{t,p: row_t = b, f_{col_t,p} = a} val_t prod_{q != p} A[f_{col_t,q}]) dA_a/dv_s
//   pair: X_p = sum_s Rp_s[p], dX_p/dv_s = Rp'_s[p] u_s
// Column of function d (B functions, then pair functions) of a site of species z: z * D + d.
//   PsiE[col]            += X_d
//   PsiF[(i*3 + c)*L+col] += dX_d/dv_s,c ; PsiF[(j*3 + c)*L+col] -= dX_d/dv_s,c  (F = -dE/dr)
//   S[(a*3 + b)*L + col]  += dX_d/dv_s,a v_s,b   (the caller symmetrises and divides by V)
// The force rows are -sum_i dB_i/dr_j: the same per-atom basis derivatives serve the fit's
// rows and the committee's forces (rows times the coefficient matrix).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

extern "C" {

// Returns 0, or 1 when an edge has zero length.
int ace_rows(int n, const int* off, const int* nbr, const double* v, const int* zc, int D, int L,
             int n_rnl, const double* R, const double* dR, int n_pair, const double* Rp, const double* dRp,
             int nY, const double* Y, const double* dY,  // dY (E, 3, nY)
             int n_A, const int* ar, const int* ay, int n_AA, const int* aa_off, const int* aa_fac,
             int n_t, const int* t_row, const int* t_col, const double* t_val,
             int n_u, const int* u_b, const int* u_a, const int* u_off, const int* e_src, const double* e_val,
             double* PsiE, double* PsiF, double* S) {
  const int n_B = D - n_pair;
  int kmax = 0;
  for (int i = 0; i < n; ++i) kmax = std::max(kmax, off[i + 1] - off[i]);
  std::vector<double> A(n_A), AA(n_AA), loo(aa_off[n_AA]), coef(n_u), u(3 * (size_t)kmax);
  std::vector<double> dA((size_t)n_A * 3 * kmax), J((size_t)D * 3 * kmax), g(D);
  for (int i = 0; i < n; ++i) {
    const int s0 = off[i], nl = off[i + 1] - s0, w = 3 * nl, z = zc[i];
    if (nl == 0) continue;
    for (int s = 0; s < nl; ++s) {
      const double* vs = v + 3 * (size_t)(s0 + s);
      const double r = std::sqrt(vs[0] * vs[0] + vs[1] * vs[1] + vs[2] * vs[2]);
      if (!(r > 0.0)) return 1;
      for (int c = 0; c < 3; ++c) u[3 * s + c] = vs[c] / r;
    }
    // A and its edge derivatives, dA[a][3 s + c]
    for (int a = 0; a < n_A; ++a) {
      const int ra = ar[a], ya = ay[a];
      double acc = 0.0;
      double* da = &dA[(size_t)a * w];
      for (int s = 0; s < nl; ++s) {
        const size_t e = s0 + s;
        const double Rv = R[e * n_rnl + ra], Yv = Y[e * nY + ya], g = dR[e * n_rnl + ra] * Yv;
        const double* dy = dY + e * 3 * nY + ya;
        acc += Rv * Yv;
        da[3 * s] = g * u[3 * s] + Rv * dy[0];
        da[3 * s + 1] = g * u[3 * s + 1] + Rv * dy[nY];
        da[3 * s + 2] = g * u[3 * s + 2] + Rv * dy[2 * nY];
      }
      A[a] = acc;
    }
    // product basis and its leave-one-out products
    for (int c = 0; c < n_AA; ++c) {
      const int o = aa_off[c], k = aa_off[c + 1] - o;
      const int* f = aa_fac + o;
      double p = 1.0;
      for (int q = 0; q < k; ++q) p *= A[f[q]];
      AA[c] = p;
      for (int q = 0; q < k; ++q) {
        double l = 1.0;
        for (int q2 = 0; q2 < k; ++q2)
          if (q2 != q) l *= A[f[q2]];
        loo[o + q] = l;
      }
    }
    double* pe = PsiE + (size_t)z * D;
    for (int t = 0; t < n_t; ++t) pe[t_row[t]] += t_val[t] * AA[t_col[t]];
    // J[d][3 s + c] = dX_d / dv_s,c
    std::fill(J.begin(), J.begin() + (size_t)D * w, 0.0);
    for (int q = 0; q < n_u; ++q) {
      double cf = 0.0;
      for (int e = u_off[q]; e < u_off[q + 1]; ++e) cf += e_val[e] * loo[e_src[e]];
      if (cf == 0.0) continue;
      double* Jb = &J[(size_t)u_b[q] * w];
      const double* da = &dA[(size_t)u_a[q] * w];
      for (int x = 0; x < w; ++x) Jb[x] += cf * da[x];
    }
    for (int p = 0; p < n_pair; ++p) {
      double acc = 0.0;
      double* Jp = &J[(size_t)(n_B + p) * w];
      for (int s = 0; s < nl; ++s) {
        const size_t e = s0 + s;
        acc += Rp[e * n_pair + p];
        const double g = dRp[e * n_pair + p];
        for (int c = 0; c < 3; ++c) Jp[3 * s + c] = g * u[3 * s + c];
      }
      pe[n_B + p] += acc;
    }
    // scatter into the force rows (centre +, neighbour -) and the virial rows
    const size_t col0 = (size_t)z * D;
    for (int s = 0; s < nl; ++s) {
      const size_t e = s0 + s;
      const int j = nbr[e];
      const double* vs = v + 3 * e;
      for (int c = 0; c < 3; ++c) {
        double* Fi = PsiF + ((size_t)i * 3 + c) * L + col0;
        double* Fj = PsiF + ((size_t)j * 3 + c) * L + col0;
        const double* Jc = &J[3 * s + c];
        for (int d = 0; d < D; ++d) g[d] = Jc[(size_t)d * w];   // one gather, then unit strides
        for (int d = 0; d < D; ++d) {
          Fi[d] += g[d];
          Fj[d] -= g[d];
        }
        if (S)
          for (int b = 0; b < 3; ++b) {
            double* Sab = S + ((size_t)c * 3 + b) * L + col0;
            const double vb = vs[b];
            for (int d = 0; d < D; ++d) Sab[d] += g[d] * vb;
          }
      }
    }
  }
  return 0;
}

}  // extern "C"
