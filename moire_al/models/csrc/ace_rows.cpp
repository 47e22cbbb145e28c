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
// The force rows are -sum_i dB_i/dr_j. Given r coefficient vectors C (L, r), the same
// kernel returns the r models' forces without forming the rows: per site
// M = (dB/dA)^T C_z (n_A, r), then T = dA^T M per edge, scattered like J (the committee).
// Threads: edge factors over edge ranges, sites over contiguous ranges with per-thread
// outputs added in thread order (deterministic for a thread count).
//
// The per-edge factors R, R' (radial, n_rnl), Rp, Rp' (pair radial), Y, grad Y (real solid or
// spherical harmonics, index l*l+l+m) are either given (R != nullptr: computed by the caller,
// any radial kind) or computed here for ace-jax's analytic radials: a generalised Agnesi
// transform x(r), the three-term polynomial recursion P_q(x), the per-species-pair matrix
// W (n_f, n_q), and an envelope (x-polynomial for R; ACE1 or plain r^-p form for the pair).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

// The hot loops are axpys and short dot products: an AVX2/FMA clone where the CPU has it,
// chosen at load time (portable across the nodes of a cluster sharing one build cache).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

namespace {

constexpr double kPi = 3.14159265358979323846;

// Four doubles in one vector register (the GCC/clang vector extension; memcpy loads/stores).
typedef double v4d __attribute__((vector_size(32)));

// One radial family (R or the pair radial) of an analytic ace-jax model.
struct Radial {
  const double *trans, *env, *W, *A, *B, *C;  // (NZ*NZ, 7), (NZ*NZ, ne), (NZ*NZ, nq, nf), (nq,) x 3
  int ne, nf, nq, env_kind;                    // env_kind: 0 poly2sx(x), 1 ace1_poly1sr(r), 2 poly1sr(r)

  // out[f], dout[f] = value and d/dr at distance r for species pair pz; P, dP scratch (nq).
  __attribute__((always_inline)) inline void eval(int pz, double r, double* P, double* dP, double* out, double* dout) const {
    const double* t = trans + 7 * (size_t)pz;
    const double p = t[0], q = t[1], a = t[2], rin = t[3], r0 = t[4], yin = t[5], ycut = t[6];
    double y = 1.0, dy = 0.0;
    if (r > rin) {
      const double s = (r - rin) / (r0 - rin), ds = 1.0 / (r0 - rin);
      const double sq = std::pow(s, q), sqp = std::pow(s, q - p), den = 1.0 + sqp;
      const double g = a * sq / den;
      const double dg = a * (q * sq / s * den - sq * (q - p) * sqp / s) / (den * den);
      y = 1.0 / (1.0 + g);
      dy = -dg * ds * y * y;
    }
    double x = -1.0 + 2.0 * (y - yin) / (ycut - yin), dx = 2.0 * dy / (ycut - yin);
    if (x < -1.0) { x = -1.0; dx = 0.0; }
    if (x > 1.0) { x = 1.0; dx = 0.0; }
    P[0] = A[0];
    dP[0] = 0.0;
    if (nq > 1) {
      P[1] = A[1] * x + B[1];
      dP[1] = A[1];
    }
    for (int k = 2; k < nq; ++k) {
      const double c = A[k] * x + B[k];
      P[k] = c * P[k - 1] + C[k] * P[k - 2];
      dP[k] = A[k] * P[k - 1] + c * dP[k - 1] + C[k] * dP[k - 2];
    }
    const double* e = env + (size_t)ne * pz;
    double ev = 0.0, de = 0.0;                  // envelope and d/dr
    if (env_kind == 0) {
      const double x1 = e[0], x2 = e[1], p1 = e[2], p2 = e[3], sc = e[4];
      if (x > x1 && x < x2) {
        const double u = x - x1, w = x2 - x, up = std::pow(u, p1), wp = std::pow(w, p2);
        ev = sc * up * wp;
        de = sc * (p1 * up / u * wp - p2 * up * wp / w) * dx;
      }
    } else if (env_kind == 1) {
      const double rc = e[0], r0e = e[1], pe = e[2];
      if (r <= rc) {
        const double sr = r / r0e, scc = rc / r0e;
        ev = std::pow(sr, -pe) - std::pow(scc, -pe) + pe * std::pow(scc, -pe - 1.0) * (sr - scc);
        de = (-pe * std::pow(sr, -pe - 1.0) + pe * std::pow(scc, -pe - 1.0)) / r0e;
      }
    } else {
      const double rc = e[0], pe = e[1];
      if (r < rc) {
        const double sr = r / rc, sp = std::pow(sr, -pe);
        ev = (sp - 1.0) * (1.0 - sr);
        de = (-pe * sp / sr * (1.0 - sr) - (sp - 1.0)) / rc;
      }
    }
    // out = W P, dout = W dP (W transposed: (nq, nf), unit stride in f), each entry summed
    // over k in order from +0: 16 f at a time in 8 vector registers, the rest one by one
    // (the same operations; with out and dout loaded and stored per k, this was half of
    // the edge factors' time, measured at nq = 42, nf = 145)
    const double* Wp = W + (size_t)pz * nq * nf;
    int f0 = 0;
    for (; f0 + 16 <= nf; f0 += 16) {
      v4d o[4], d[4];
      for (int m = 0; m < 4; ++m) o[m] = d[m] = v4d{0.0, 0.0, 0.0, 0.0};
      for (int k = 0; k < nq; ++k) {
        const double* wk = Wp + (size_t)k * nf + f0;
        const double pk = P[k], dpk = dP[k];
        for (int m = 0; m < 4; ++m) {
          v4d w;
          std::memcpy(&w, wk + 4 * m, 32);
          o[m] += w * pk;
          d[m] += w * dpk;
        }
      }
      std::memcpy(out + f0, o, sizeof o);
      std::memcpy(dout + f0, d, sizeof d);
    }
    for (int f = f0; f < nf; ++f) {
      double o = 0.0, d = 0.0;
      for (int k = 0; k < nq; ++k) {
        o += Wp[(size_t)k * nf + f] * P[k];
        d += Wp[(size_t)k * nf + f] * dP[k];
      }
      out[f] = o;
      dout[f] = d;
    }
    const double g = dx * ev;
    for (int f = 0; f < nf; ++f) {
      const double v = out[f];
      out[f] = v * ev;
      dout[f] = dout[f] * g + v * de;
    }
  }
};

// Real solid (r^l Y_lm) or spherical harmonics and their gradients, l <= lmax: Y[l*l+l+m],
// dY[c * nY + i]. Y = N_l|m| Rbar_l^|m|(u) (A_|m| or B_|m|) rad, u = z/r,
// (x + i y)^m = A_m + i B_m, rad = r^(l-|m|) (solid) or r^-|m| (spherical).
struct Harmonics {
  int lmax, W;
  bool solid;
  std::vector<double> norm, Am, Bm, P, dP, rp;

  Harmonics(int lmax_, bool solid_)
      : lmax(lmax_), W(lmax_ + 1), solid(solid_), norm(W * W), Am(W), Bm(W), P(W * W), dP(W * W), rp(W + 2) {
    for (int l = 0; l <= lmax; ++l)
      for (int m = -l; m <= l; ++m) {
        const int am = std::abs(m);
        const double c = std::exp(0.5 * (std::log(2.0 * l + 1) - std::log(4.0 * kPi) +
                                         std::lgamma(l - am + 1.0) - std::lgamma(l + am + 1.0)));
        norm[l * l + l + m] = m ? c * std::sqrt(2.0) : c;
      }
  }

  __attribute__((always_inline)) inline void eval(const double* v, double* Y, double* dY) {
    const double x = v[0], y = v[1], z = v[2];
    const double r2 = x * x + y * y + z * z, r = std::sqrt(r2), ir = 1.0 / r, u = z * ir;
    const double ir3 = ir * ir * ir, du[3] = {-z * x * ir3, -z * y * ir3, (x * x + y * y) * ir3};
    const int nY = W * W;
    Am[0] = 1.0;
    Bm[0] = 0.0;
    for (int m = 1; m <= lmax; ++m) {
      Am[m] = x * Am[m - 1] - y * Bm[m - 1];
      Bm[m] = x * Bm[m - 1] + y * Am[m - 1];
    }
    double df = 1.0;
    for (int m = 0; m <= lmax; ++m) {                 // P[l * W + m] = Rbar_l^m(u), dP = d/du
      if (m > 0) df *= 2 * m - 1;
      P[m * W + m] = df;
      dP[m * W + m] = 0.0;
      if (m + 1 <= lmax) {
        P[(m + 1) * W + m] = (2 * m + 1) * u * df;
        dP[(m + 1) * W + m] = (2 * m + 1) * df;
      }
      for (int l = m + 2; l <= lmax; ++l) {
        P[l * W + m] = ((2 * l - 1) * u * P[(l - 1) * W + m] - (l + m - 1) * P[(l - 2) * W + m]) / (l - m);
        dP[l * W + m] = ((2 * l - 1) * (P[(l - 1) * W + m] + u * dP[(l - 1) * W + m]) -
                         (l + m - 1) * dP[(l - 2) * W + m]) / (l - m);
      }
    }
    rp[0] = 1.0;                                       // r^k (solid) or r^-k (spherical)
    for (int k = 1; k <= lmax; ++k) rp[k] = rp[k - 1] * (solid ? r : ir);
    for (int l = 0; l <= lmax; ++l)
      for (int m = -l; m <= l; ++m) {
        const int am = std::abs(m), i = l * l + l + m;
        const int k = solid ? l - am : -am;            // rad = r^k, d rad = k r^(k-2) v
        const double rad = rp[solid ? k : am], drad = k * rad * ir * ir;
        const double ang = m >= 0 ? Am[am] : Bm[am];
        double dax = 0.0, day = 0.0;                  // d/dx, d/dy of A_m (m >= 0) or B_m
        if (am > 0) {
          dax = am * (m > 0 ? Am[am - 1] : Bm[am - 1]);
          day = am * (m > 0 ? -Bm[am - 1] : Am[am - 1]);
        }
        const double c = norm[i], Pl = P[l * W + am], dPl = dP[l * W + am];
        Y[i] = c * Pl * ang * rad;
        const double a = c * dPl * ang * rad, b = c * Pl * rad, g = c * Pl * ang * drad;
        dY[i] = a * du[0] + b * dax + g * x;
        dY[nY + i] = a * du[1] + b * day + g * y;
        dY[2 * nY + i] = a * du[2] + g * z;
      }
  }
};

MULTIVERSION void edge_factors_range(size_t e0, size_t e1, const double* v, const int* pz, const int* src,
                                     const Radial& rnl, const Radial& pair, int lmax, bool solid, int n_rnl,
                                     int n_pair, double* R, double* dR, double* Rp, double* dRp, double* Y,
                                     double* dY) {
  Harmonics harm(lmax, solid);
  const int nY = (lmax + 1) * (lmax + 1);
  std::vector<double> P(std::max(rnl.nq, pair.nq)), dP(std::max(rnl.nq, pair.nq));
  for (size_t e = e0; e < e1; ++e) {
    if (src && src[e] >= 0) continue;
    const double* ve = v + 3 * e;
    const double r = std::sqrt(ve[0] * ve[0] + ve[1] * ve[1] + ve[2] * ve[2]);
    rnl.eval(pz[e], r, P.data(), dP.data(), R + e * n_rnl, dR + e * n_rnl);
    pair.eval(pz[e], r, P.data(), dP.data(), Rp + e * n_pair, dRp + e * n_pair);
    harm.eval(ve, Y + e * nY, dY + e * 3 * nY);
  }
}

// Edges e with src[e] >= 0 (the reverse edge, same species pair) from that edge: the same
// radials, Y(-v) = (-1)^l Y(v) and grad Y(-v) = (-1)^(l+1) grad Y(v).
void edge_factors_copy(size_t e0, size_t e1, const int* src, int lmax, int n_rnl, int n_pair, double* R,
                       double* dR, double* Rp, double* dRp, double* Y, double* dY) {
  const int nY = (lmax + 1) * (lmax + 1);
  for (size_t e = e0; e < e1; ++e) {
    if (src[e] < 0) continue;
    const size_t o = src[e];
    std::memcpy(R + e * n_rnl, R + o * n_rnl, sizeof(double) * n_rnl);
    std::memcpy(dR + e * n_rnl, dR + o * n_rnl, sizeof(double) * n_rnl);
    std::memcpy(Rp + e * n_pair, Rp + o * n_pair, sizeof(double) * n_pair);
    std::memcpy(dRp + e * n_pair, dRp + o * n_pair, sizeof(double) * n_pair);
    for (int l = 0; l <= lmax; ++l) {
      const double sg = (l % 2) ? -1.0 : 1.0;
      for (int i = l * l; i < (l + 1) * (l + 1); ++i) {
        Y[e * nY + i] = sg * Y[o * nY + i];
        for (int c = 0; c < 3; ++c) dY[(e * 3 + c) * nY + i] = -sg * dY[(o * 3 + c) * nY + i];
      }
    }
  }
}

}  // namespace

extern "C" {

// The per-edge factors of edges [0, E) (vectors v, species pair index pz = zi * NZ + zj) for
// an analytic model: R, dR (E, n_rnl), Rp, dRp (E, n_pair), Y (E, nY), dY (E, 3, nY).
// rW, pW: the radial coefficients per species pair, transposed to (NZ*NZ, n_q, n_f).
// src (or NULL): per edge -1, or its reverse edge (-v, same species pair, src[src[e]] = -1)
// whose factors give this edge's (each pair's radials and harmonics computed once).
// nt threads over edge ranges: each edge's numbers do not depend on the split.
MULTIVERSION void ace_edge_factors(int E, const double* v, const int* pz, const double* rt, const double* re, int re_n,
                      const double* rW, int n_rnl, const double* rA, const double* rB, const double* rC, int rq,
                      const double* pt, const double* pe, int pe_n, int pe_kind, const double* pW, int n_pair,
                      const double* pA, const double* pB, const double* pC, int pq, int lmax, int solid,
                      double* R, double* dR, double* Rp, double* dRp, double* Y, double* dY, const int* src,
                      int nt) {
  const Radial rnl{rt, re, rW, rA, rB, rC, re_n, n_rnl, rq, 0};
  const Radial pair{pt, pe, pW, pA, pB, pC, pe_n, n_pair, pq, pe_kind};
  nt = std::max(1, std::min(nt, E / 64));
  std::vector<std::thread> pool;
  for (int t = 1; t < nt; ++t)
    pool.emplace_back(edge_factors_range, (size_t)E * t / nt, (size_t)E * (t + 1) / nt, v, pz, src, std::cref(rnl),
                      std::cref(pair), lmax, solid != 0, n_rnl, n_pair, R, dR, Rp, dRp, Y, dY);
  edge_factors_range(0, (size_t)E / nt, v, pz, src, rnl, pair, lmax, solid != 0, n_rnl, n_pair, R, dR, Rp, dRp, Y,
                     dY);
  for (auto& th : pool) th.join();
  if (!src) return;
  pool.clear();
  for (int t = 1; t < nt; ++t)
    pool.emplace_back(edge_factors_copy, (size_t)E * t / nt, (size_t)E * (t + 1) / nt, src, lmax, n_rnl, n_pair, R,
                      dR, Rp, dRp, Y, dY);
  edge_factors_copy(0, (size_t)E / nt, src, lmax, n_rnl, n_pair, R, dR, Rp, dRp, Y, dY);
  for (auto& th : pool) th.join();
}

}  // extern "C"

namespace {

// The coupling and the edges of one structure, as the caller passes them.
struct Plan {
  int n_A; const int *ar, *ay; int n_AA; const int *aa_off, *aa_fac;
  int n_t; const int *t_row, *t_col; const double* t_val;
  int n_u; const int *u_b, *u_a, *u_off, *e_src; const double* e_val;
};
struct Edges {
  int n; const int *off, *nbr; const double* v; const int* zc; int D, L;
  int n_rnl; const double *R, *dR; int n_pair; const double *Rp, *dRp; int nY; const double *Y, *dY;
};

// Per-thread scratch of one site: unit vectors, A, dA[a][3 s + c], AA, the leave-one-out
// products and cf[q] = dB_{u_b[q]} / dA_{u_a[q]}.
struct Site {
  const Edges& g;
  const Plan& p;
  int s0 = 0, nl = 0, w = 0, z = 0;
  std::vector<double> A, AA, loo, cf, u, dA;
  Site(const Edges& g_, const Plan& p_, int kmax)
      : g(g_), p(p_), A(p_.n_A), AA(p_.n_AA), loo(p_.aa_off[p_.n_AA]), cf(p_.n_u), u(3 * (size_t)kmax),
        dA((size_t)p_.n_A * 3 * kmax) {}

  // Site i's factors; its energy-row part added to pe (length D of its species block).
  // Returns 0, 1 for an edge of zero length, -1 for a site without edges.
  MULTIVERSION int prepare(int i, double* PsiE) {
    s0 = g.off[i];
    nl = g.off[i + 1] - s0;
    w = 3 * nl;
    z = g.zc[i];
    if (nl == 0) return -1;
    const int n_rnl = g.n_rnl, nY = g.nY;
    for (int s = 0; s < nl; ++s) {
      const double* vs = g.v + 3 * (size_t)(s0 + s);
      const double r = std::sqrt(vs[0] * vs[0] + vs[1] * vs[1] + vs[2] * vs[2]);
      if (!(r > 0.0)) return 1;
      for (int c = 0; c < 3; ++c) u[3 * s + c] = vs[c] / r;
    }
    for (int a = 0; a < p.n_A; ++a) {
      const int ra = p.ar[a], ya = p.ay[a];
      double acc = 0.0;
      double* da = &dA[(size_t)a * w];
      for (int s = 0; s < nl; ++s) {
        const size_t e = s0 + s;
        const double Rv = g.R[e * n_rnl + ra], Yv = g.Y[e * nY + ya], gr = g.dR[e * n_rnl + ra] * Yv;
        const double* dy = g.dY + e * 3 * nY + ya;
        acc += Rv * Yv;
        da[3 * s] = gr * u[3 * s] + Rv * dy[0];
        da[3 * s + 1] = gr * u[3 * s + 1] + Rv * dy[nY];
        da[3 * s + 2] = gr * u[3 * s + 2] + Rv * dy[2 * nY];
      }
      A[a] = acc;
    }
    // the products and the leave-one-out products, each in factor order (1.0 * x is
    // exact): orders 1-3 written out, which frees the multiplications of one product from
    // the loop's serial chain (the general loop was 60 % of this function at order 3)
    for (int c = 0; c < p.n_AA; ++c) {
      const int o = p.aa_off[c], k = p.aa_off[c + 1] - o;
      const int* f = p.aa_fac + o;
      double* l = &loo[o];
      if (k == 1) {
        AA[c] = A[f[0]];
        l[0] = 1.0;
      } else if (k == 2) {
        const double a0 = A[f[0]], a1 = A[f[1]];
        AA[c] = a0 * a1;
        l[0] = a1;
        l[1] = a0;
      } else if (k == 3) {
        const double a0 = A[f[0]], a1 = A[f[1]], a2 = A[f[2]];
        AA[c] = a0 * a1 * a2;
        l[0] = a1 * a2;
        l[1] = a0 * a2;
        l[2] = a0 * a1;
      } else {
        double pr = 1.0;
        for (int q = 0; q < k; ++q) pr *= A[f[q]];
        AA[c] = pr;
        for (int q = 0; q < k; ++q) {
          double lq = 1.0;
          for (int q2 = 0; q2 < k; ++q2)
            if (q2 != q) lq *= A[f[q2]];
          l[q] = lq;
        }
      }
    }
    double* pe = PsiE + (size_t)z * g.D;
    for (int t = 0; t < p.n_t; ++t) pe[p.t_row[t]] += p.t_val[t] * AA[p.t_col[t]];
    const int n_B = g.D - g.n_pair;
    for (int q = 0; q < g.n_pair; ++q) {
      double acc = 0.0;
      for (int s = 0; s < nl; ++s) acc += g.Rp[(size_t)(s0 + s) * g.n_pair + q];
      pe[n_B + q] += acc;
    }
    for (int q = 0; q < p.n_u; ++q) {
      double c = 0.0;
      for (int e = p.u_off[q]; e < p.u_off[q + 1]; ++e) c += p.e_val[e] * loo[p.e_src[e]];
      cf[q] = c;
    }
    return 0;
  }
};

// acc[m] += cf * x[4 m .. 4 m + 4) for m < N. Callers add every coupling pair, cf = 0
// included: fma(0, x, acc) is acc for finite x (the outputs start at +0, never -0).
template <int N>
__attribute__((always_inline)) inline void add_scaled(v4d* acc, double cf, const double* x) {
  for (int m = 0; m < N; ++m) {
    v4d v;
    std::memcpy(&v, x + 4 * m, 32);
    acc[m] += cf * v;
  }
}

// Sites [i0, i1) into the rows PsiE, PsiF, S (the whole structure's, or a thread's own).
MULTIVERSION int rows_range(const Edges& g, const Plan& p, int kmax, int i0, int i1, double* PsiE, double* PsiF,
                            size_t ldf, double* S) {
  const int D = g.D, L = g.L, n_B = D - g.n_pair, n_pair = g.n_pair;
  Site st(g, p, kmax);
  // J (dX_d / dv_s,c) is built CE edges at a time: the chunk's 3 CE columns of dA (n_A x 24,
  // 48 kB) are copied together, each function's 24 values are summed in NV vector registers
  // (the sparse dB/dA, in order) and stored transposed into JT[3 s + c][d] (24 rows of D), so
  // that each neighbour's force row takes one contiguous stream of D values, the hardware
  // prefetcher's case. Measured at L = 5.5k, 1 thread, against J tiles of 64 functions
  // scattered in 64-wide pieces with software prefetch: J 0.51 -> 0.43 ms and scatter 0.70
  // -> 0.22 ms per site, rows bitwise equal; CE 4 or 16: 1.1-1.2x slower than 8.
  constexpr int CE = 8, CX = 3 * CE, NV = CX / 4;
  std::vector<double> dAc((size_t)p.n_A * CX), JT((size_t)CX * D);
  // function d's coupling pairs are [bstart[d], bstart[d + 1]) (sorted by u_b); uoff: their
  // rows of dAc
  std::vector<int> bstart(D + 1, p.n_u), uoff(p.n_u);
  for (int q = p.n_u - 1; q >= 0; --q) bstart[p.u_b[q]] = q;
  for (int d = D - 1; d >= 0; --d) bstart[d] = std::min(bstart[d], bstart[d + 1]);
  for (int q = 0; q < p.n_u; ++q) uoff[q] = p.u_a[q] * CX;
  // G[a][c] = sum_s dA_a/dv_s,c and G[a][3 + 3 c + b] = sum_s dA_a/dv_s,c v_s,b: the centre's
  // force rows and the virial rows are sum_s J, sum_s J v, i.e. the sparse dB/dA times these
  // 12 columns (n_u x 12 per site), instead of 12 load-stores per function and edge (the
  // scatter was a third of the kernel)
  std::vector<double> G((size_t)p.n_A * 12);
  for (int i = i0; i < i1; ++i) {
    const int status = st.prepare(i, PsiE);
    if (status > 0) return status;
    if (status < 0) continue;
    const int s0 = st.s0, nl = st.nl, w = st.w, z = st.z;
    const double* u = st.u.data();
    const size_t col0 = (size_t)z * D;
    const double* V = g.v + 3 * (size_t)s0;
    // the 12 sums of an edge vector x (component c of edge s): acc[c] += x, acc[3 + 3 c + b] += x v_b
    auto sum12 = [&](double* acc, int s, int c, double x) {
      acc[c] += x;
      for (int b = 0; b < 3; ++b) acc[3 + 3 * c + b] += x * V[3 * s + b];
    };
    double* Fi[3];
    for (int c = 0; c < 3; ++c) Fi[c] = PsiF + ((size_t)i * 3 + c) * ldf + col0;
    double* Sr[9];
    for (int k = 0; k < 9; ++k) Sr[k] = S ? S + (size_t)k * L + col0 : nullptr;
    // function d's centre force rows += f g[0..3), virial rows += f g[3..12)
    auto put12 = [&](int d, double f, const double* g12) {
      for (int c = 0; c < 3; ++c) Fi[c][d] += f * g12[c];
      if (S)
        for (int k = 0; k < 9; ++k) Sr[k][d] += f * g12[3 + k];
    };
    for (int a = 0; a < p.n_A; ++a) {
      const double* da = &st.dA[(size_t)a * w];
      double acc[12] = {0.0};
      for (int s = 0; s < nl; ++s)
        for (int c = 0; c < 3; ++c) sum12(acc, s, c, da[3 * s + c]);
      std::copy(acc, acc + 12, &G[(size_t)a * 12]);
    }
    // per function, its 12 row entries loaded once, its pairs' terms added in order (the
    // same operations as one read-modify-write per pair, which was most of this part)
    for (int d = 0; d < n_B; ++d) {
      v4d acc[3];
      double* a = (double*)acc;
      for (int c = 0; c < 3; ++c) a[c] = Fi[c][d];
      for (int k = 0; k < 9; ++k) a[3 + k] = S ? Sr[k][d] : 0.0;
      for (int q = bstart[d]; q < bstart[d + 1]; ++q) add_scaled<3>(acc, st.cf[q], &G[(size_t)p.u_a[q] * 12]);
      for (int c = 0; c < 3; ++c) Fi[c][d] = a[c];
      if (S)
        for (int k = 0; k < 9; ++k) Sr[k][d] = a[3 + k];
    }
    for (int qp = 0; qp < n_pair; ++qp) {
      double acc[12] = {0.0};
      for (int s = 0; s < nl; ++s) {
        const double gr = g.dRp[(size_t)(s0 + s) * n_pair + qp];
        for (int c = 0; c < 3; ++c) sum12(acc, s, c, gr * u[3 * s + c]);
      }
      put12(n_B + qp, 1.0, acc);                    // x 1.0: exact
    }
    for (int c0 = 0; c0 < nl; c0 += CE) {
      const int ne = std::min(CE, nl - c0), nx = 3 * ne;
      for (int a = 0; a < p.n_A; ++a) {
        const double* da = &st.dA[(size_t)a * w + 3 * c0];
        double* dc = &dAc[(size_t)a * CX];
        for (int x = 0; x < CX; ++x) dc[x] = x < nx ? da[x] : 0.0;
      }
      for (int d = 0; d < D; ++d) {
        v4d acc[NV];
        for (int m = 0; m < NV; ++m) acc[m] = v4d{0.0, 0.0, 0.0, 0.0};
        if (d < n_B) {
          for (int q = bstart[d]; q < bstart[d + 1]; ++q) add_scaled<NV>(acc, st.cf[q], &dAc[uoff[q]]);
        } else {
          double t[CX] = {0.0};
          for (int s = 0; s < ne; ++s) {
            const double gr = g.dRp[(size_t)(s0 + c0 + s) * n_pair + (d - n_B)];
            for (int c = 0; c < 3; ++c) t[3 * s + c] = gr * u[3 * (c0 + s) + c];
          }
          std::memcpy(acc, t, sizeof t);
        }
        double* o = &JT[d];
        for (int m = 0; m < NV; ++m)
          for (int r = 0; r < 4; ++r) o[(size_t)(4 * m + r) * D] = acc[m][r];
      }
      // scatter into the neighbours' force rows (-)
      for (int s = 0; s < ne; ++s) {
        const int j = g.nbr[s0 + c0 + s];
        for (int c = 0; c < 3; ++c) {
          double* Fj = PsiF + ((size_t)j * 3 + c) * ldf + col0;
          const double* Jx = &JT[(size_t)(3 * s + c) * D];
          for (int d = 0; d < D; ++d) Fj[d] -= Jx[d];
        }
      }
    }
  }
  return 0;
}

// Columns [k0, k0 + 4 NV) of M[a] = sum over a's coupling pairs q (in order, from +0) of
// cf[q] C_z[u_b[q]], in NV vector registers. Every pair is added, cf = 0 included (see
// add_scaled: the same values as skipping it).
template <int NV>
__attribute__((always_inline)) inline void m_block(double* Ma, const double* Cz, int rp, int k0, const double* cf,
                                                   const int* u_b, const int* qs, int nq) {
  v4d acc[NV];
  for (int m = 0; m < NV; ++m) acc[m] = v4d{0.0, 0.0, 0.0, 0.0};
  for (int t = 0; t < nq; ++t) add_scaled<NV>(acc, cf[qs[t]], Cz + (size_t)u_b[qs[t]] * rp + k0);
  std::memcpy(Ma + k0, acc, 32 * NV);
}

// Rows [x0, x0 + XB) of T = dA^T M (T, M: rp columns, rp a multiple of 8), each entry
// summed over a in order from +0 in registers: the same operations as adding row a of M
// into T for a = 0, 1, ... (the outer-product form, whose load and store of T per a were
// 3/4 of the committee kernel's time; XB x 2 accumulators, 2 loads of M and XB of dA per a).
// Then the pair functions' terms, in q order: row x = 3 s + c takes dRp_s[q] u_s,c times
// C's pair row q (Cq: rp columns each), as it did after the A terms before.
template <int XB>
__attribute__((always_inline)) inline void t_block(const double* dA, int w, int n_A, const double* M, int rp, int x0,
                                                   int n_pair, const double* dRp, const double* u, const double* Cq,
                                                   double* T) {
  for (int k0 = 0; k0 < rp; k0 += 8) {
    v4d acc[XB][2];
    for (int b = 0; b < XB; ++b) acc[b][0] = acc[b][1] = v4d{0.0, 0.0, 0.0, 0.0};
    for (int a = 0; a < n_A; ++a) {
      v4d m0, m1;
      std::memcpy(&m0, M + (size_t)a * rp + k0, 32);
      std::memcpy(&m1, M + (size_t)a * rp + k0 + 4, 32);
      const double* da = dA + (size_t)a * w + x0;
      for (int b = 0; b < XB; ++b) {
        acc[b][0] += da[b] * m0;
        acc[b][1] += da[b] * m1;
      }
    }
    for (int q = 0; q < n_pair; ++q) {
      v4d c0, c1;
      std::memcpy(&c0, Cq + (size_t)q * rp + k0, 32);
      std::memcpy(&c1, Cq + (size_t)q * rp + k0 + 4, 32);
      for (int b = 0; b < XB; ++b) {
        const int x = x0 + b;
        const double gc = dRp[(size_t)(x / 3) * n_pair + q] * u[x];
        acc[b][0] += gc * c0;
        acc[b][1] += gc * c1;
      }
    }
    for (int b = 0; b < XB; ++b) std::memcpy(T + (size_t)(x0 + b) * rp + k0, acc[b], 64);
  }
}

// Sites [i0, i1) contracted with r coefficient vectors C (L, r) without the rows: per site
// M[a][k] = sum_b dB_b/dA_a C[b][k] (the sparse dB/dA once), the per-edge gradients
// T[3 s + c][k] = sum_a dA_a/dv_s,c M[a][k] + pair terms, scattered into F (3n, r) (F of model
// k = rows times C, centre +, neighbour -) and the unsymmetrised virial Sv (9, r).
MULTIVERSION int committee_range(const Edges& g, const Plan& p, int kmax, int i0, int i1, const double* C, int r,
                                 double* PsiE, double* F, double* Sv) {
  const int D = g.D, n_B = D - g.n_pair, n_pair = g.n_pair, n_A = p.n_A;
  Site st(g, p, kmax);
  // M and T rows padded with zeros to rp = a multiple of 8 models: the loops over the
  // models vectorise without a remainder. M and T are summed in registers (m_block,
  // t_block): 1.4x over the read-modify-write forms at L = 684, r = 33, bitwise equal
  const int rp = (r + 7) / 8 * 8;
  std::vector<double> M((size_t)n_A * rp), T(3 * (size_t)kmax * rp);
  // m_block's inputs: the coupling pairs grouped by their a, in q order within a group (the
  // order in which M[a] took its terms as one read-modify-write per pair, the kernel's
  // largest part once T was blocked), and C padded to rp columns
  std::vector<int> aq(p.n_u), astart(n_A + 1, 0);
  for (int q = 0; q < p.n_u; ++q) ++astart[p.u_a[q] + 1];
  for (int a = 0; a < n_A; ++a) astart[a + 1] += astart[a];
  {
    std::vector<int> fill(astart.begin(), astart.end() - 1);
    for (int q = 0; q < p.n_u; ++q) aq[fill[p.u_a[q]]++] = q;
  }
  std::vector<double> Cpad((size_t)g.L * rp, 0.0);
  for (size_t b = 0; b < (size_t)g.L; ++b) std::copy(C + b * r, C + b * r + r, &Cpad[b * rp]);
  for (int i = i0; i < i1; ++i) {
    const int status = st.prepare(i, PsiE);
    if (status > 0) return status;
    if (status < 0) continue;
    const int s0 = st.s0, nl = st.nl, w = st.w;
    const double* u = st.u.data();
    const double* Cz = &Cpad[(size_t)st.z * D * rp];
    for (int a = 0; a < n_A; ++a) {
      double* Ma = &M[(size_t)a * rp];
      int k0 = 0;
      for (; k0 + 16 <= rp; k0 += 16) m_block<4>(Ma, Cz, rp, k0, st.cf.data(), p.u_b, &aq[astart[a]], astart[a + 1] - astart[a]);
      if (k0 < rp) m_block<2>(Ma, Cz, rp, k0, st.cf.data(), p.u_b, &aq[astart[a]], astart[a + 1] - astart[a]);
    }
    // T = dA^T M + pair terms (w x rp) in register blocks of 6 (or 3) rows x 8 models (w = 3 nl)
    const double* dRp = g.dRp + (size_t)s0 * n_pair;
    const double* Cq = Cz + (size_t)n_B * rp;
    int x0 = 0;
    for (; x0 + 6 <= w; x0 += 6) t_block<6>(st.dA.data(), w, n_A, M.data(), rp, x0, n_pair, dRp, u, Cq, T.data());
    for (; x0 < w; x0 += 3) t_block<3>(st.dA.data(), w, n_A, M.data(), rp, x0, n_pair, dRp, u, Cq, T.data());
    for (int s = 0; s < nl; ++s) {
      const size_t e = s0 + s;
      const int j = g.nbr[e];
      const double* vs = g.v + 3 * e;
      for (int c = 0; c < 3; ++c) {
        const double* Tx = &T[(size_t)(3 * s + c) * rp];
        double* Fi = F + ((size_t)i * 3 + c) * r;
        double* Fj = F + ((size_t)j * 3 + c) * r;
        for (int k = 0; k < r; ++k) {
          Fi[k] += Tx[k];
          Fj[k] -= Tx[k];
        }
        if (Sv)
          for (int b = 0; b < 3; ++b) {
            double* Sab = Sv + ((size_t)c * 3 + b) * r;
            for (int k = 0; k < r; ++k) Sab[k] += Tx[k] * vs[b];
          }
      }
    }
  }
  return 0;
}

// Contiguous site ranges of about equal work (edges + a per-site constant) for nt threads.
std::vector<int> site_split(const Edges& g, int nt) {
  std::vector<int> b(nt + 1, g.n);
  b[0] = 0;
  const double total = (double)g.off[g.n] + 16.0 * g.n;
  int t = 1;
  for (int i = 0; i < g.n && t < nt; ++i)
    if (g.off[i + 1] + 16.0 * (i + 1) >= total * t / nt) b[t++] = i + 1;
  return b;
}

// Run f(thread, i0, i1, PsiE, out..) on nt threads; thread 0 writes into the outputs, the
// others into their own zeroed copies, added in thread order afterwards (deterministic for
// a given nt; one thread is the serial loop).
template <class Fn>
int run_threads(const Edges& g, int nt, const std::vector<std::pair<double*, size_t>>& outs, Fn f) {
  const std::vector<int> b = site_split(g, nt);
  std::vector<std::vector<std::vector<double>>> priv(nt);
  std::vector<int> status(nt, 0);
  std::vector<std::thread> pool;
  auto body = [&](int t) {
    std::vector<double*> ptr;
    if (t == 0) {
      for (auto& o : outs) ptr.push_back(o.first);
    } else {
      for (auto& o : outs) {
        priv[t].emplace_back(o.first ? o.second : 0, 0.0);
        ptr.push_back(o.first ? priv[t].back().data() : nullptr);
      }
    }
    status[t] = f(b[t], b[t + 1], ptr);
  };
  for (int t = 1; t < nt; ++t) pool.emplace_back(body, t);
  body(0);
  for (auto& th : pool) th.join();
  for (int s : status)
    if (s) return s;
  // the reduction, split over the elements (same order per element whatever the split)
  auto reduce = [&](int t) {
    for (size_t o = 0; o < outs.size(); ++o) {
      if (!outs[o].first) continue;
      const size_t n = outs[o].second, x0 = n * t / nt, x1 = n * (t + 1) / nt;
      double* out = outs[o].first;
      for (int u = 1; u < nt; ++u) {
        const double* src = priv[u][o].data();
        for (size_t x = x0; x < x1; ++x) out[x] += src[x];
      }
    }
  };
  pool.clear();
  for (int t = 1; t < nt; ++t) pool.emplace_back(reduce, t);
  reduce(0);
  for (auto& th : pool) th.join();
  return 0;
}

int max_degree(const Edges& g) {
  int kmax = 0;
  for (int i = 0; i < g.n; ++i) kmax = std::max(kmax, g.off[i + 1] - g.off[i]);
  return kmax;
}

}  // namespace

extern "C" {

// One structure. C == NULL: the design rows, energy row PsiE (L), force rows out = PsiF
// (3n rows of stride ld >= L, e.g. straight into a block of the fit's weighted rows; ld 0:
// L), the unsymmetrised virial rows S (9, L) or NULL. Else, for r linear models C (L, r):
// PsiE (L), their force components out = F (3n, r) and unsymmetrised virials S (9, r) or
// NULL, without the force rows (the committee's scoring). The outputs are added to. nt
// threads over sites. Returns 0, or 1 when an edge has zero length.
int ace_rows(int n, const int* off, const int* nbr, const double* v, const int* zc, int D, int L,
             int n_rnl, const double* R, const double* dR, int n_pair, const double* Rp, const double* dRp,
             int nY, const double* Y, const double* dY,  // dY (E, 3, nY)
             int n_A, const int* ar, const int* ay, int n_AA, const int* aa_off, const int* aa_fac,
             int n_t, const int* t_row, const int* t_col, const double* t_val,
             int n_u, const int* u_b, const int* u_a, const int* u_off, const int* e_src, const double* e_val,
             const double* C, int r, double* PsiE, double* out, double* S, int nt, int ld) {
  const Edges g{n, off, nbr, v, zc, D, L, n_rnl, R, dR, n_pair, Rp, dRp, nY, Y, dY};
  const Plan p{n_A, ar, ay, n_AA, aa_off, aa_fac, n_t, t_row, t_col, t_val, n_u, u_b, u_a, u_off, e_src, e_val};
  const int kmax = max_degree(g);
  const size_t width = C ? (size_t)r : (size_t)L, ldf = (!C && ld > 0) ? (size_t)ld : width;
  if (ldf < width) return 2;
  nt = std::max(1, std::min(nt, n));
  return run_threads(g, nt, {{PsiE, (size_t)L}, {out, 3 * (size_t)n * ldf}, {S, 9 * width}},
                     [&](int i0, int i1, const std::vector<double*>& o) {
                       return C ? committee_range(g, p, kmax, i0, i1, C, r, o[0], o[1], o[2])
                                : rows_range(g, p, kmax, i0, i1, o[0], o[1], ldf, o[2]);
                     });
}

}  // extern "C"
