// Two-body D3(BJ) dispersion: energy, gradient and virial, in atomic units.
//
// Written for moire-al (layered cells of ~10^3 atoms with a 15-30 Å cutoff, where the
// pair search, not the physics, is the cost):
//  * periodic images become ghost atoms, binned in a Cartesian cell list;
//  * every pair is kept once (half list over (owner, lattice shift)) as (i, j, shift),
//    so a list built with a skin serves later geometries (MD, relaxation) unchanged;
//  * the coordination numbers use their own, shorter cutoff and their pairs are
//    kept for the chain rule; the long-range dispersion pairs are never stored;
//  * C6(CN_i, CN_j) = w_i^T C6ref w_j with per-atom Gaussian weights w, computed once
//    per atom (no exponentials in the pair loop).
// The reference data (C6 table, reference CNs, <r4>/<r2>, covalent radii) come from the
// caller (moire_al.models.d3).
#include <cmath>
#include <vector>
#include <algorithm>
#include <unordered_map>

namespace {

constexpr double KCN = 16.0;   // steepness of the counting function
constexpr double WF = 4.0;     // Gaussian weight of the reference CNs

struct Ghost {
  double x, y, z;
  int owner;
  int key;  // > 0: lattice shift lexicographically positive, 0: none, < 0: negative
};

inline int shift_key(int a, int b, int c) {
  if (a != 0) return a > 0 ? 1 : -1;
  if (b != 0) return b > 0 ? 1 : -1;
  if (c != 0) return c > 0 ? 1 : -1;
  return 0;
}

bool inverse3(const double* m, double* inv) {
  double det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
               m[2] * (m[3] * m[7] - m[4] * m[6]);
  if (std::fabs(det) < 1e-12) return false;
  double id = 1.0 / det;
  inv[0] = (m[4] * m[8] - m[5] * m[7]) * id;
  inv[1] = (m[2] * m[7] - m[1] * m[8]) * id;
  inv[2] = (m[1] * m[5] - m[2] * m[4]) * id;
  inv[3] = (m[5] * m[6] - m[3] * m[8]) * id;
  inv[4] = (m[0] * m[8] - m[2] * m[6]) * id;
  inv[5] = (m[2] * m[3] - m[0] * m[5]) * id;
  inv[6] = (m[3] * m[7] - m[4] * m[6]) * id;
  inv[7] = (m[1] * m[6] - m[0] * m[7]) * id;
  inv[8] = (m[0] * m[4] - m[1] * m[3]) * id;
  return true;
}

}  // namespace


struct PairList {
  int n = 0;
  std::vector<int> pi, pj, ps;          // pairs: i, j, index of the lattice shift
  std::vector<int> shifts;              // (nshift, 3) integer lattice shifts
  size_t nchain = 0;                    // pairs [0, nchain) were within the chain-rule cutoff
  size_t nshort = 0;                    // pairs [0, nshort) were within the short cutoff
};

extern "C" {

// Build the pair list of all pairs closer than rc_long: first the nchain closer than rc_chain,
// then up to nshort closer than rc_short, then the rest. x (n,3) positions, cell (3,3) rows,
// pbc (3,). Returns nullptr for a singular periodic cell; *status = 2 when two atoms coincide.
void* d3_list_new(int n, const double* x, const double* cell, const int* pbc, double rc_chain,
                  double rc_short, double rc_long, int* status) {
  *status = 0;
  const double rc = std::max(rc_short, rc_long);
  struct G { double x, y, z; int owner, key, s0, s1, s2; };
  std::vector<G> ghosts;
  ghosts.reserve((size_t)n * 8);
  bool any_pbc = pbc[0] || pbc[1] || pbc[2];
  std::vector<int> fl((size_t)3 * n, 0);   // floor of the fractional coordinates (wrapping)
  if (!any_pbc) {
    for (int i = 0; i < n; ++i) ghosts.push_back({x[3 * i], x[3 * i + 1], x[3 * i + 2], i, 0, 0, 0, 0});
  } else {
    double inv[9];
    if (!inverse3(cell, inv)) { *status = 1; return nullptr; }
    double vol = std::fabs(cell[0] * (cell[4] * cell[8] - cell[5] * cell[7]) -
                           cell[1] * (cell[3] * cell[8] - cell[5] * cell[6]) +
                           cell[2] * (cell[3] * cell[7] - cell[4] * cell[6]));
    int nrep[3];
    double margin[3];
    for (int k = 0; k < 3; ++k) {
      const double* u = cell + 3 * ((k + 1) % 3);
      const double* v = cell + 3 * ((k + 2) % 3);
      double cx = u[1] * v[2] - u[2] * v[1], cy = u[2] * v[0] - u[0] * v[2], cz = u[0] * v[1] - u[1] * v[0];
      double h = vol / std::sqrt(cx * cx + cy * cy + cz * cz);  // spacing of lattice planes
      margin[k] = pbc[k] ? rc / h : 0.0;
      nrep[k] = pbc[k] ? (int)std::ceil(rc / h) + 1 : 0;
    }
    std::vector<double> frac((size_t)3 * n);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 3; ++k) {
        double f = x[3 * i] * inv[k] + x[3 * i + 1] * inv[3 + k] + x[3 * i + 2] * inv[6 + k];
        double w = pbc[k] ? std::floor(f) : 0.0;
        fl[3 * i + k] = (int)w;
        frac[3 * i + k] = f - w;
      }
    for (int a = -nrep[0]; a <= nrep[0]; ++a)
      for (int b = -nrep[1]; b <= nrep[1]; ++b)
        for (int c = -nrep[2]; c <= nrep[2]; ++c) {
          int key = shift_key(a, b, c);
          int s[3] = {a, b, c};
          for (int i = 0; i < n; ++i) {
            bool keep = true;
            double f[3];
            for (int k = 0; k < 3 && keep; ++k) {
              f[k] = frac[3 * i + k] + s[k];
              if (pbc[k] && (f[k] < -margin[k] || f[k] > 1.0 + margin[k])) keep = false;
            }
            if (!keep) continue;
            ghosts.push_back({f[0] * cell[0] + f[1] * cell[3] + f[2] * cell[6],
                              f[0] * cell[1] + f[1] * cell[4] + f[2] * cell[7],
                              f[0] * cell[2] + f[1] * cell[5] + f[2] * cell[8], i, key, a, b, c});
          }
        }
  }
  const int ng = (int)ghosts.size();
  double lo[3] = {1e300, 1e300, 1e300}, hi[3] = {-1e300, -1e300, -1e300};
  for (const auto& g : ghosts) {
    lo[0] = std::min(lo[0], g.x); hi[0] = std::max(hi[0], g.x);
    lo[1] = std::min(lo[1], g.y); hi[1] = std::max(hi[1], g.y);
    lo[2] = std::min(lo[2], g.z); hi[2] = std::max(hi[2], g.z);
  }
  const double edge = std::max(rc / 5.0, 1.0);
  const double ie = 1.0 / edge;
  int nb[3];
  for (int k = 0; k < 3; ++k) nb[k] = std::max(1, (int)std::floor((hi[k] - lo[k]) * ie) + 1);
  const size_t nbins = (size_t)nb[0] * nb[1] * nb[2];
  std::vector<int> bin_of(ng), start(nbins + 1, 0);
  auto bc = [&](double v, int k) { return std::min(nb[k] - 1, std::max(0, (int)((v - lo[k]) * ie))); };
  for (int g = 0; g < ng; ++g) {
    int b = (bc(ghosts[g].z, 2) * nb[1] + bc(ghosts[g].y, 1)) * nb[0] + bc(ghosts[g].x, 0);
    bin_of[g] = b;
    start[b + 1]++;
  }
  for (size_t b = 0; b < nbins; ++b) start[b + 1] += start[b];
  std::vector<double> gx(ng), gy(ng), gz(ng);
  std::vector<int> gown(ng), gkey(ng), gsh(ng), home(n, -1);
  // distinct lattice shifts relative to the caller's (unwrapped) positions are made per pair
  {
    std::vector<int> fill(start.begin(), start.end() - 1);
    for (int g = 0; g < ng; ++g) {
      int p = fill[bin_of[g]]++;
      gx[p] = ghosts[g].x; gy[p] = ghosts[g].y; gz[p] = ghosts[g].z;
      gown[p] = ghosts[g].owner; gkey[p] = ghosts[g].key; gsh[p] = g;
      if (ghosts[g].key == 0) home[ghosts[g].owner] = p;   // the unshifted image
    }
  }
  const int R = (int)std::ceil(rc * ie);
  const double rc2 = rc * rc, rs2 = rc_short * rc_short;
  auto* L = new PairList();
  L->n = n;
  std::vector<int> li, lj, lg;     // long pairs (ghost index) before the shift table
  std::vector<int> si_, sj_, sg_;  // short pairs
  std::vector<int> ci_, cj_, cg_;  // chain-rule pairs
  const double rch2 = rc_chain * rc_chain;
  li.reserve((size_t)n * 256); lj.reserve((size_t)n * 256); lg.reserve((size_t)n * 256);
  for (int i = 0; i < n; ++i) {
    const int h = home[i];
    const double xi = gx[h], yi = gy[h], zi = gz[h];
    const int cx = bc(xi, 0), cy = bc(yi, 1), cz = bc(zi, 2);
    const double ox = xi - (lo[0] + cx * edge), oy = yi - (lo[1] + cy * edge), oz = zi - (lo[2] + cz * edge);
    for (int dz_ = -R; dz_ <= R; ++dz_) {
      int bz = cz + dz_;
      if (bz < 0 || bz >= nb[2]) continue;
      double mz = dz_ > 0 ? dz_ * edge - oz : (dz_ < 0 ? oz - (dz_ + 1) * edge : 0.0);
      if (mz * mz >= rc2) continue;
      for (int dy_ = -R; dy_ <= R; ++dy_) {
        int by = cy + dy_;
        if (by < 0 || by >= nb[1]) continue;
        double my = dy_ > 0 ? dy_ * edge - oy : (dy_ < 0 ? oy - (dy_ + 1) * edge : 0.0);
        if (mz * mz + my * my >= rc2) continue;
        for (int dx_ = -R; dx_ <= R; ++dx_) {
          int bx = cx + dx_;
          if (bx < 0 || bx >= nb[0]) continue;
          double mx = dx_ > 0 ? dx_ * edge - ox : (dx_ < 0 ? ox - (dx_ + 1) * edge : 0.0);
          if (mz * mz + my * my + mx * mx >= rc2) continue;
          size_t b = ((size_t)bz * nb[1] + by) * nb[0] + bx;
          for (int g = start[b]; g < start[b + 1]; ++g) {
            int o = gown[g];
            if (o < i || (o == i && gkey[g] <= 0)) continue;   // each pair once
            double dx = gx[g] - xi, dy = gy[g] - yi, dz = gz[g] - zi;
            double r2 = dx * dx + dy * dy + dz * dz;
            if (r2 >= rc2) continue;
            if (r2 < 1e-12) { *status = 2; delete L; return nullptr; }
            if (r2 < rch2) { ci_.push_back(i); cj_.push_back(o); cg_.push_back(gsh[g]); }
            else if (r2 < rs2) { si_.push_back(i); sj_.push_back(o); sg_.push_back(gsh[g]); }
            else { li.push_back(i); lj.push_back(o); lg.push_back(gsh[g]); }
          }
        }
      }
    }
  }
  // lattice shift of each pair relative to the caller's positions:
  // ghost = wrapped + s = x/cell - floor + s, so x_j + (s - fl_j + fl_i)·cell - x_i
  std::vector<int> table_key;  // dedupe shifts through a small hash map on packed ints
  std::unordered_map<long long, int> idx;
  auto shift_of = [&](int i, int j, int g) {
    int s0 = ghosts[g].s0 - fl[3 * j] + fl[3 * i];
    int s1 = ghosts[g].s1 - fl[3 * j + 1] + fl[3 * i + 1];
    int s2 = ghosts[g].s2 - fl[3 * j + 2] + fl[3 * i + 2];
    long long key = ((long long)(s0 + 100000) * 200001LL + (s1 + 100000)) * 200001LL + (s2 + 100000);
    auto it = idx.find(key);
    if (it != idx.end()) return it->second;
    int k = (int)(L->shifts.size() / 3);
    L->shifts.push_back(s0); L->shifts.push_back(s1); L->shifts.push_back(s2);
    idx.emplace(key, k);
    return k;
  };
  const size_t nc_ = ci_.size(), ns_ = nc_ + si_.size(), nl_ = li.size();
  L->pi.resize(ns_ + nl_); L->pj.resize(ns_ + nl_); L->ps.resize(ns_ + nl_);
  size_t q = 0;
  auto put = [&](const std::vector<int>& a, const std::vector<int>& b, const std::vector<int>& g) {
    for (size_t p = 0; p < a.size(); ++p, ++q) { L->pi[q] = a[p]; L->pj[q] = b[p]; L->ps[q] = shift_of(a[p], b[p], g[p]); }
  };
  put(ci_, cj_, cg_);
  put(si_, sj_, sg_);
  put(li, lj, lg);
  L->nchain = nc_;
  L->nshort = ns_;
  return L;
}

void d3_list_free(void* list) { delete static_cast<PairList*>(list); }

long long d3_list_size(void* list) { return (long long)static_cast<PairList*>(list)->pi.size(); }

// Two-body D3(BJ) over a pair list. Returns 0, or 2 when two atoms coincide.
//  x (n,3) current positions, cell (3,3) current cell rows; sp (n,) species index in [0, ns)
//  nref (ns,), refcn (ns, maxref), c6ref (ns, ns, maxref, maxref), r4r2 (ns,): C8 = 3 C6 r4r2_i r4r2_j
//  rcov (ns,) covalent radii of the counting function; s6, s8, a1, a2 BJ parameters;
//  rc_disp, rc_cn cutoffs (rc_cn must not exceed the list's short cutoff); rc_chain: pairs
//  farther than this add to the CN but not to its chain rule (dCN/dr ~ 1e-6 / Å there).
//  Out: energies (n,) (half of each pair to each atom), grad (n,3), sigma (3,3) = sum over
//  pairs of dE/dr_ij (x) r_ij, cn (n,).
int d3_eval(void* list, const double* x, const double* cell, const int* sp, int ns, int maxref,
            const int* nref, const double* refcn, const double* c6ref, const double* r4r2,
            const double* rcov, double s6, double s8, double a1, double a2, double rc_disp,
            double rc_cn, double rc_chain, double* energies, double* grad, double* sigma,
            double* cn_out) {
  const PairList& L = *static_cast<PairList*>(list);
  const int n = L.n;
  const size_t npair = L.pi.size(), nshort = L.nshort;
  const size_t nsh = L.shifts.size() / 3;
  std::vector<double> tv(3 * nsh);
  for (size_t k = 0; k < nsh; ++k)
    for (int c = 0; c < 3; ++c)
      tv[3 * k + c] = L.shifts[3 * k] * cell[c] + L.shifts[3 * k + 1] * cell[3 + c] + L.shifts[3 * k + 2] * cell[6 + c];
  const double rcn2 = rc_cn * rc_cn, rd2 = rc_disp * rc_disp;
  auto dvec = [&](size_t p, double& dx, double& dy, double& dz) {
    const int i = L.pi[p], j = L.pj[p];
    const double* t = &tv[3 * L.ps[p]];
    dx = x[3 * j] - x[3 * i] + t[0];
    dy = x[3 * j + 1] - x[3 * i + 1] + t[1];
    dz = x[3 * j + 2] - x[3 * i + 2] + t[2];
    return dx * dx + dy * dy + dz * dz;
  };
  // ---- coordination numbers (short pairs)
  std::vector<double> cn(n, 0.0);
  std::vector<double> dcn(nshort, 0.0);   // (dCN_pair/dr) / r, for the chain rule
  for (size_t p = 0; p < nshort; ++p) {
    double dx, dy, dz;
    const double r2 = dvec(p, dx, dy, dz);
    if (r2 >= rcn2) continue;
    if (r2 < 1e-12) return 2;
    const double r = std::sqrt(r2);
    const double rco = rcov[sp[L.pi[p]]] + rcov[sp[L.pj[p]]];
    const double e = std::exp(-KCN * (rco / r - 1.0));
    const double f = 1.0 / (1.0 + e);
    dcn[p] = r < rc_chain ? -KCN * rco / (r2 * r) * e * f * f : 0.0;
    cn[L.pi[p]] += f;
    cn[L.pj[p]] += f;
  }
  // ---- Gaussian weights per atom and their CN derivatives
  std::vector<double> w((size_t)n * maxref, 0.0), dw((size_t)n * maxref, 0.0);
  for (int i = 0; i < n; ++i) {
    int s = sp[i], nr = nref[s];
    double norm = 0.0, dnorm = 0.0;
    double g[16], dg[16];
    for (int a = 0; a < nr; ++a) {
      double d = cn[i] - refcn[s * maxref + a];
      g[a] = std::exp(-WF * d * d);
      dg[a] = -2.0 * WF * d * g[a];
      norm += g[a];
      dnorm += dg[a];
    }
    if (norm > 1e-300) {
      for (int a = 0; a < nr; ++a) {
        w[(size_t)i * maxref + a] = g[a] / norm;
        dw[(size_t)i * maxref + a] = (dg[a] * norm - g[a] * dnorm) / (norm * norm);
      }
    } else {  // far from every reference: the one with the largest CN
      int best = 0;
      for (int a = 1; a < nr; ++a)
        if (refcn[s * maxref + a] > refcn[s * maxref + best]) best = a;
      w[(size_t)i * maxref + best] = 1.0;
    }
  }
  // u_i[t][b] = sum_a w_ia C6ref[s_i, t, a, b] and its CN derivative
  const size_t ub = (size_t)ns * maxref;
  std::vector<double> u((size_t)n * ub), du((size_t)n * ub);
  for (int i = 0; i < n; ++i) {
    int s = sp[i];
    for (int t = 0; t < ns; ++t)
      for (int b = 0; b < maxref; ++b) {
        double acc = 0.0, dacc = 0.0;
        for (int a = 0; a < nref[s]; ++a) {
          double c = c6ref[(((size_t)s * ns + t) * maxref + a) * maxref + b];
          acc += w[(size_t)i * maxref + a] * c;
          dacc += dw[(size_t)i * maxref + a] * c;
        }
        u[(size_t)i * ub + t * maxref + b] = acc;
        du[(size_t)i * ub + t * maxref + b] = dacc;
      }
  }

  // ---- dispersion, then the CN chain rule, over the stored pairs
  std::vector<double> dedcn(n, 0.0);
  for (int i = 0; i < n; ++i) energies[i] = 0.0;
  for (int k = 0; k < 3 * n; ++k) grad[k] = 0.0;
  double sg[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  auto tally = [&](int i, int j, double fr, double dx, double dy, double dz) {
    double gx_ = fr * dx, gy_ = fr * dy, gz_ = fr * dz;
    grad[3 * j] += gx_; grad[3 * j + 1] += gy_; grad[3 * j + 2] += gz_;
    grad[3 * i] -= gx_; grad[3 * i + 1] -= gy_; grad[3 * i + 2] -= gz_;
    sg[0] += gx_ * dx; sg[1] += gx_ * dy; sg[2] += gx_ * dz;
    sg[3] += gy_ * dx; sg[4] += gy_ * dy; sg[5] += gy_ * dz;
    sg[6] += gz_ * dx; sg[7] += gz_ * dy; sg[8] += gz_ * dz;
  };
  std::vector<double> kq((size_t)ns * ns), k6((size_t)ns * ns), k8((size_t)ns * ns);
  for (int a = 0; a < ns; ++a)
    for (int b = 0; b < ns; ++b) {
      const double qq = 3.0 * r4r2[a] * r4r2[b];
      const double r0 = a1 * std::sqrt(qq) + a2;
      const double r02 = r0 * r0;
      kq[a * ns + b] = qq;
      k6[a * ns + b] = r02 * r02 * r02;
      k8[a * ns + b] = r02 * r02 * r02 * r02;
    }
  for (size_t p = 0; p < npair; ++p) {
    double dx, dy, dz;
    const double r2 = dvec(p, dx, dy, dz);
    if (r2 >= rd2) continue;
    if (r2 < 1e-12) return 2;
    const int i = L.pi[p], j = L.pj[p];
    const int si = sp[i], sj = sp[j];
    const double* ui = &u[(size_t)i * ub + sj * maxref];
    const double* dui = &du[(size_t)i * ub + sj * maxref];
    const double* wj = &w[(size_t)j * maxref];
    const double* dwj = &dw[(size_t)j * maxref];
    double c6 = 0.0, dc6i = 0.0, dc6j = 0.0;
    for (int b = 0; b < nref[sj]; ++b) {
      c6 += ui[b] * wj[b];
      dc6i += dui[b] * wj[b];
      dc6j += ui[b] * dwj[b];
    }
    const double qq = kq[si * ns + sj], r06 = k6[si * ns + sj], r08 = k8[si * ns + sj];
    const double r4 = r2 * r2, r6 = r4 * r2, r8 = r4 * r4;
    const double t6 = 1.0 / (r6 + r06), t8 = 1.0 / (r8 + r08);
    const double h = s6 * t6 + s8 * qq * t8;                                  // E_pair = -C6 h
    const double dh = -6.0 * s6 * r4 * t6 * t6 - 8.0 * s8 * qq * r6 * t8 * t8;  // (dh/dr) / r
    const double e = -c6 * h;
    energies[i] += 0.5 * e;
    energies[j] += 0.5 * e;
    dedcn[i] -= dc6i * h;
    dedcn[j] -= dc6j * h;
    tally(i, j, -c6 * dh, dx, dy, dz);
  }
  const size_t nchain = L.nchain;
  for (size_t p = 0; p < nchain; ++p) {
    if (dcn[p] == 0.0) continue;
    double dx, dy, dz;
    dvec(p, dx, dy, dz);
    const int i = L.pi[p], j = L.pj[p];
    tally(i, j, (dedcn[i] + dedcn[j]) * dcn[p], dx, dy, dz);
  }
  for (int k = 0; k < 9; ++k) sigma[k] = sg[k];
  for (int i = 0; i < n; ++i) cn_out[i] = cn[i];
  return 0;
}

}  // extern "C"
