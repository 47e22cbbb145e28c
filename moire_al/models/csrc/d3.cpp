// Two-body D3(BJ) dispersion: energy, gradient and virial, in atomic units.
//
// Written for moire-al (layered cells of ~10^3 atoms with a 15-30 Å cutoff, where the
// pair search, not the physics, is the cost):
//  * periodic images become ghost atoms (owner, integer lattice shift), sorted once into
//    bins on a grid in fractional coordinates; a list built with a skin serves later
//    geometries (MD, relaxation) unchanged: each call moves the ghosts with their owners
//    and visits, per atom, the bins within the cutoff + skin of its position at the build;
//  * no pair list is stored: each atom sums over the contiguous ghosts of the bin rows of
//    its half stencil (every pair once: see d3_list_new), as SIMD loops over
//    structure-of-arrays ghost data (positions, the owner's weights and dE/dCN), the
//    neighbour's side of each pair summed per ghost and folded into its owner after the
//    pass; the counting function's exp is a vectorisable polynomial;
//  * threads split the atoms (fixed chunks), each with its own ghost sums;
//  * the coordination numbers, the dispersion and the CN chain rule each visit their own
//    cutoff;
//  * C6(CN_i, CN_j) = w_i^T C6ref w_j with per-atom Gaussian weights w, computed once
//    per atom (no exponentials in the pair loop);
// The reference data (C6 table, reference CNs, <r4>/<r2>, covalent radii) come from the
// caller (moire_al.models.d3).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <climits>
#include <thread>
#include <unordered_map>

namespace {

constexpr double KCN = 16.0;   // steepness of the counting function
constexpr double WF = 4.0;     // Gaussian weight of the reference CNs

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

// exp(a) for |a| <= 700 to ~1 ulp, written so that loops over it vectorise: a = k ln2 + t,
// exp(t) by its Taylor series to degree 13 (|t| <= ln2 / 2: remainder < 1e-17), 2^k built
// in the exponent bits (the low bits of a * log2(e) + 1.5 * 2^52 hold k).
#pragma omp declare simd notinbranch
inline double vexp(double a) {
  a = std::min(700.0, std::max(-700.0, a));
  const double SH = 6755399441055744.0;
  const double kd = a * 1.4426950408889634074 + SH;
  const double k = kd - SH;
  const double t = a - k * 0.69314718055994528623 - k * 2.3190468138462996154e-17;
  double p = 1.0 / 6227020800.0;
  p = p * t + 1.0 / 479001600.0;
  p = p * t + 1.0 / 39916800.0;
  p = p * t + 1.0 / 3628800.0;
  p = p * t + 1.0 / 362880.0;
  p = p * t + 1.0 / 40320.0;
  p = p * t + 1.0 / 5040.0;
  p = p * t + 1.0 / 720.0;
  p = p * t + 1.0 / 120.0;
  p = p * t + 1.0 / 24.0;
  p = p * t + 1.0 / 6.0;
  p = p * t + 0.5;
  p = p * t + 1.0;
  p = p * t + 1.0;
  int64_t bits;
  std::memcpy(&bits, &kd, 8);
  bits = (bits + 1023) << 52;
  double s;
  std::memcpy(&s, &bits, 8);
  return p * s;
}

}  // namespace


struct GhostList {
  int n = 0, ng = 0;
  std::vector<int> owner;       // (ng,) ghosts sorted by bin
  std::vector<int> shift;       // (ng, 3) lattice shift of the ghost from its owner's given position
  std::vector<int> home;        // (n,) atom i's own image (shift -floor(frac_i))
  std::vector<int> start;       // (nbins + 1,) ghosts of bin b: [start[b], start[b + 1])
  double rc[3] = {0, 0, 0};     // list radii (cutoff + skin): chain rule, CN, dispersion
  // per radius k, atom i: the ghost ranges (g0, g1) of its half stencil, rg[k][2 ro[k][i] ..
  // 2 ro[k][i + 1]); the first is its own bin (only owners > i count there), the rest are bins
  // at a lexicographically positive offset.
  std::vector<int> rg[3];
  std::vector<size_t> ro[3];
};

extern "C" {

// Build the ghost cell list for pairs closer than rc_long (all radii include the skin): x (n,3)
// positions, cell (3,3) rows (any non-singular cell when nothing is periodic), pbc (3,).
// rc_chain, rc_short: the radii of the chain-rule and CN sums.
// Bins are a grid in fractional coordinates with a whole number of bins per cell along each
// periodic axis, so a lattice translation maps bins onto bins: the bin offset of a pair seen
// from j is minus the one seen from i, and keeping the lexicographically positive offsets
// (and, within a bin, owner j > i) keeps every pair once. Returns nullptr and *status = 1 for
// a singular cell.
void* d3_list_new(int n, const double* x, const double* cell, const int* pbc, double rc_chain,
                  double rc_short, double rc_long, int* status) {
  *status = 0;
  const double rc = std::max(rc_short, rc_long);
  double inv[9];
  if (!inverse3(cell, inv)) { *status = 1; return nullptr; }
  const double vol = std::fabs(cell[0] * (cell[4] * cell[8] - cell[5] * cell[7]) -
                               cell[1] * (cell[3] * cell[8] - cell[5] * cell[6]) +
                               cell[2] * (cell[3] * cell[7] - cell[4] * cell[6]));
  // bins of a third of the chain-rule radius (>= 2 bohr): measured 1.2x faster than a quarter
  // or a half on the 1,008-atom bilayer (larger bins: fewer, longer SIMD rows; smaller: less waste)
  const double edge = std::max(std::min(rc_chain, rc) / 3.0, 2.0);   // bohr
  int nrep[3];
  double margin[3], m[3];   // m: bins per unit of fractional coordinate
  for (int k = 0; k < 3; ++k) {
    const double* u = cell + 3 * ((k + 1) % 3);
    const double* v = cell + 3 * ((k + 2) % 3);
    double cx = u[1] * v[2] - u[2] * v[1], cy = u[2] * v[0] - u[0] * v[2], cz = u[0] * v[1] - u[1] * v[0];
    double h = vol / std::sqrt(cx * cx + cy * cy + cz * cz);  // spacing of lattice planes
    margin[k] = pbc[k] ? rc / h : 0.0;
    nrep[k] = pbc[k] ? (int)std::ceil(rc / h) + 1 : 0;
    m[k] = pbc[k] ? std::max(1.0, std::floor(h / edge)) : h / edge;
  }
  std::vector<double> frac((size_t)3 * n);
  std::vector<int> fl((size_t)3 * n, 0), hb((size_t)3 * n);   // floor (wrapping), home bin
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < 3; ++k) {
      double f = x[3 * i] * inv[k] + x[3 * i + 1] * inv[3 + k] + x[3 * i + 2] * inv[6 + k];
      double w = pbc[k] ? std::floor(f) : 0.0;
      fl[3 * i + k] = (int)w;
      frac[3 * i + k] = f - w;
      hb[3 * i + k] = (int)std::floor(frac[3 * i + k] * m[k]);
      if (pbc[k]) hb[3 * i + k] = std::min(hb[3 * i + k], (int)m[k] - 1);
    }
  struct G { int owner, s0, s1, s2, b0, b1, b2; };
  std::vector<G> ghosts;
  ghosts.reserve((size_t)n * 8);
  for (int a = -nrep[0]; a <= nrep[0]; ++a)
    for (int b = -nrep[1]; b <= nrep[1]; ++b)
      for (int c = -nrep[2]; c <= nrep[2]; ++c) {
        const int s[3] = {a, b, c};
        for (int i = 0; i < n; ++i) {
          bool keep = true;
          for (int k = 0; k < 3 && keep; ++k) {
            const double f = frac[3 * i + k] + s[k];
            if (pbc[k] && (f < -margin[k] || f > 1.0 + margin[k])) keep = false;
          }
          if (!keep) continue;
          ghosts.push_back({i, a - fl[3 * i], b - fl[3 * i + 1], c - fl[3 * i + 2],
                            hb[3 * i] + a * (int)m[0], hb[3 * i + 1] + b * (int)m[1], hb[3 * i + 2] + c * (int)m[2]});
        }
      }
  auto* L = new GhostList();
  L->n = n;
  const int ng = L->ng = (int)ghosts.size();
  int lo[3] = {INT32_MAX, INT32_MAX, INT32_MAX}, hi[3] = {INT32_MIN, INT32_MIN, INT32_MIN};
  for (const auto& g : ghosts) {
    const int bb[3] = {g.b0, g.b1, g.b2};
    for (int k = 0; k < 3; ++k) { lo[k] = std::min(lo[k], bb[k]); hi[k] = std::max(hi[k], bb[k]); }
  }
  int nb[3];
  for (int k = 0; k < 3; ++k) nb[k] = hi[k] - lo[k] + 1;
  auto lin = [&](int b0, int b1, int b2) { return ((size_t)(b2 - lo[2]) * nb[1] + (b1 - lo[1])) * nb[0] + (b0 - lo[0]); };
  const size_t nbins = (size_t)nb[0] * nb[1] * nb[2];
  std::vector<size_t> bin_of(ng);
  L->start.assign(nbins + 1, 0);
  for (int g = 0; g < ng; ++g) {
    bin_of[g] = lin(ghosts[g].b0, ghosts[g].b1, ghosts[g].b2);
    L->start[bin_of[g] + 1]++;
  }
  for (size_t b = 0; b < nbins; ++b) L->start[b + 1] += L->start[b];
  L->owner.resize(ng); L->shift.resize((size_t)3 * ng); L->home.assign(n, -1);
  {
    std::vector<int> fill(L->start.begin(), L->start.end() - 1);
    for (int g = 0; g < ng; ++g) {
      const G& q = ghosts[g];
      const int p = fill[bin_of[g]]++;
      const int o = q.owner;
      L->owner[p] = o;
      L->shift[3 * p] = q.s0; L->shift[3 * p + 1] = q.s1; L->shift[3 * p + 2] = q.s2;
      if (q.s0 == -fl[3 * o] && q.s1 == -fl[3 * o + 1] && q.s2 == -fl[3 * o + 2]) L->home[o] = p;
    }
  }
  L->rc[0] = rc_chain; L->rc[1] = rc_short; L->rc[2] = rc;
  // Half stencils. Bin offset d (integer, 3): points of bin hb_i + d lie at fractional
  // offsets delta + t / m from atom i, delta_k = (hb_ik + d_k) / m_k - frac_ik, t in [0, 1)^3;
  // the bin is visited when its centre is closer than R + the largest half diagonal.
  double va[3][3];   // cartesian vector of one bin step along each axis
  for (int k = 0; k < 3; ++k)
    for (int c = 0; c < 3; ++c) va[k][c] = cell[3 * k + c] / m[k];
  double hd = 0.0;
  for (int sb = -1; sb <= 1; sb += 2)
    for (int sc = -1; sc <= 1; sc += 2) {
      double v2 = 0.0;
      for (int c = 0; c < 3; ++c) {
        const double v = 0.5 * (va[0][c] + sb * va[1][c] + sc * va[2][c]);
        v2 += v * v;
      }
      hd = std::max(hd, std::sqrt(v2));
    }
  for (int k = 0; k < 3; ++k) {
    const double R = L->rc[k] + hd, R2 = R * R;
    int D[3];
    for (int a = 0; a < 3; ++a) {   // |d_a| bound from the spacing of bin planes
      const double* u = va[(a + 1) % 3];
      const double* v = va[(a + 2) % 3];
      double cx = u[1] * v[2] - u[2] * v[1], cy = u[2] * v[0] - u[0] * v[2], cz = u[0] * v[1] - u[1] * v[0];
      const double bv = std::fabs(va[a][0] * cx + va[a][1] * cy + va[a][2] * cz);
      const double sp_ = bv / std::sqrt(cx * cx + cy * cy + cz * cz);
      D[a] = (int)std::ceil(R / sp_) + 1;
    }
    L->ro[k].assign(n + 1, 0);
    auto& out = L->rg[k];
    for (int i = 0; i < n; ++i) {
      const int B0 = hb[3 * i], B1 = hb[3 * i + 1], B2 = hb[3 * i + 2];
      // own bin
      {
        const size_t b = lin(B0, B1, B2);
        out.push_back(L->start[b]); out.push_back(L->start[b + 1]);
      }
      for (int d2 = 0; d2 <= D[2]; ++d2) {
        const int b2 = B2 + d2;
        if (b2 < lo[2] || b2 > hi[2]) continue;
        for (int d1 = (d2 == 0 ? 0 : -D[1]); d1 <= D[1]; ++d1) {
          const int b1 = B1 + d1;
          if (b1 < lo[1] || b1 > hi[1]) continue;
          // centre of bin (B + d) relative to atom i, as a function of d0: c0 + d0 va[0]
          double c0[3];
          const double f1 = (B1 + d1 + 0.5) / m[1] - frac[3 * i + 1];
          const double f2 = (B2 + d2 + 0.5) / m[2] - frac[3 * i + 2];
          const double f0 = (B0 + 0.5) / m[0] - frac[3 * i];
          for (int c = 0; c < 3; ++c) c0[c] = f0 * cell[c] + f1 * cell[3 + c] + f2 * cell[6 + c];
          // |c0 + t va0|^2 < R2: A t^2 + 2 Bq t + C < 0
          const double A_ = va[0][0] * va[0][0] + va[0][1] * va[0][1] + va[0][2] * va[0][2];
          const double Bq = c0[0] * va[0][0] + c0[1] * va[0][1] + c0[2] * va[0][2];
          const double C = c0[0] * c0[0] + c0[1] * c0[1] + c0[2] * c0[2] - R2;
          const double disc = Bq * Bq - A_ * C;
          if (disc <= 0.0) continue;
          const double sq = std::sqrt(disc);
          int t0 = (int)std::ceil((-Bq - sq) / A_), t1 = (int)std::floor((-Bq + sq) / A_);
          if (d2 == 0 && d1 == 0) t0 = std::max(t0, 1);          // own row: bins after the own one
          t0 = std::max(t0, lo[0] - B0);
          t1 = std::min(t1, hi[0] - B0);
          if (t1 < t0) continue;
          const int g0 = L->start[lin(B0 + t0, b1, b2)], g1 = L->start[lin(B0 + t1, b1, b2) + 1];
          if (g1 > g0) { out.push_back(g0); out.push_back(g1); }
        }
      }
      L->ro[k][i + 1] = out.size() / 2;
    }
  }
  return L;
}

void d3_list_free(void* list) { delete static_cast<GhostList*>(list); }

// The number of ghost atoms (images within the cutoff of the cell, the atoms included).
long long d3_list_size(void* list) { return (long long)static_cast<GhostList*>(list)->ng; }

}  // extern "C"

namespace {

struct Args {
  const double* x; const double* cell; const int* sp; int ns;
  const int* nref; const double* refcn; const double* c6ref; const double* r4r2; const double* rcov;
  double s6, s8, a1, a2, rc_disp, rc_cn, rc_chain;
  double* energies; double* grad; double* sigma; double* cn_out;
};

constexpr int PAD = 16;    // the ghost loops run over whole multiples of this (masked tails)
constexpr int MAXNS = 8;   // species per structure (the kernel's per-atom tables)

// Runs body(t, i) for i in [0, n) on nt threads (the caller's and nt - 1 started here): chunk
// c of atoms goes to thread c % nt (a fixed split: the same sums for the same thread count).
// Waiting threads sleep (join), never spin: on cores shared with other jobs an OpenMP
// barrier's spin-wait cost more than the work (measured: 2 threads 2.2x slower than 1).
template <class F>
void parallel_for(int nt, int n, int chunk, const F& body) {
  auto work = [&](int t) {
    for (int a = t * chunk; a < n; a += nt * chunk)
      for (int i = a, e = std::min(n, a + chunk); i < e; ++i) body(t, i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < nt; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

// Per-thread sums of one pass: atom i's own (e, dE/dCN, gradient, virial) and, per ghost,
// the neighbour's side of each pair.
struct Acc { double v[11] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}; };   // e, dE/dCN, grad (3), sigma (6)

inline int padded(int g0, int g1) { return g0 + ((g1 - g0 + PAD - 1) / PAD) * PAD; }

// 1 for g < g1, else 0, as arithmetic: a comparison of the loop index would let GCC's -O3
// loop splitting cut the padded SIMD loops at g1 and run the part that matters scalar
// (measured 1.6x slower).
inline int before(int g, int g1) { return (int)((unsigned)(g - g1) >> 31); }

// Atom i's pairs with ghosts [g0, g1) whose owner > omin: counting function added to CN_i
// and to the ghost's sum JC; bad counts coincident atoms.
inline void cn_row(const double* __restrict GX, const double* __restrict GY, const double* __restrict GZ,
                   const double* __restrict GRC, const int* __restrict GO, double* __restrict JC, int g0,
                   int g1, int omin, double xi, double yi, double zi, double rci, double rcn2, double& cn,
                   double& bad) {
  const int g1p = padded(g0, g1);
  double cni = 0.0, nbad = 0.0;
#pragma omp simd reduction(+ : cni, nbad)
  for (int g = g0; g < g1p; ++g) {
    const double dx = GX[g] - xi, dy = GY[g] - yi, dz = GZ[g] - zi;
    const double r2v = dx * dx + dy * dy + dz * dz;
    const bool ok = before(g, g1) & (GO[g] > omin);
    nbad += (ok && r2v < 1e-12) ? 1.0 : 0.0;
    const double r = std::sqrt(ok && r2v >= 1e-12 ? r2v : 1.0);
    const double e = vexp(-KCN * ((rci + GRC[g]) / r - 1.0));
    const double f = (ok && r2v < rcn2) ? 1.0 / (1.0 + e) : 0.0;
    cni += f;
    JC[g] += f;
  }
  cn += cni;
  bad += nbad;
}

// Dispersion of atom i's pairs with ghosts [g0, g1) (owner > omin): E_pair = -C6 h(r),
// half to each atom; dE/dCN to each side; gradient; virial once per pair. kq, k6, k8:
// C8/C6 ratio and BJ radii^6, ^8 by the species of j; u, du: (NS, MR) rows of atom i.
template <int MR, int NS>
inline void disp_row(const double* __restrict GX, const double* __restrict GY, const double* __restrict GZ,
                     const int* __restrict GS, const int* __restrict GO, const double* __restrict GW,
                     const double* __restrict GDW, int ngp, double* __restrict JE, double* __restrict JD,
                     double* __restrict JX, double* __restrict JY, double* __restrict JZ, int g0, int g1,
                     int omin, double xi, double yi, double zi, double rd2, double s6, double s8,
                     const double* kq, const double* k6, const double* k8, const double* u, const double* du,
                     Acc& acc) {
  const int g1p = padded(g0, g1);
  double ei = 0.0, dedi = 0.0, gxi = 0.0, gyi = 0.0, gzi = 0.0;
  double s00 = 0, s01 = 0, s02 = 0, s11 = 0, s12 = 0, s22 = 0;
#pragma omp simd reduction(+ : ei, dedi, gxi, gyi, gzi, s00, s01, s02, s11, s12, s22)
  for (int g = g0; g < g1p; ++g) {
    const double dx = GX[g] - xi, dy = GY[g] - yi, dz = GZ[g] - zi;
    const double r2v = dx * dx + dy * dy + dz * dz;
    const bool in = before(g, g1) & (GO[g] > omin) & (r2v < rd2);
    const double r2 = in ? r2v : 1.0;
    const int sj = GS[g];
    double qq = kq[0], r06 = k6[0], r08 = k8[0];
    for (int t = 1; t < NS; ++t) {
      const bool st = sj == t;
      qq = st ? kq[t] : qq; r06 = st ? k6[t] : r06; r08 = st ? k8[t] : r08;
    }
    double c6 = 0.0, dc6i = 0.0, dc6j = 0.0;
    for (int b = 0; b < MR; ++b) {
      double uu = u[b], dd = du[b];
      for (int t = 1; t < NS; ++t) {
        const bool st = sj == t;
        uu = st ? u[t * MR + b] : uu; dd = st ? du[t * MR + b] : dd;
      }
      const double wb = GW[(size_t)b * ngp + g];
      c6 += uu * wb;
      dc6i += dd * wb;
      dc6j += uu * GDW[(size_t)b * ngp + g];
    }
    const double msk = in ? 1.0 : 0.0;
    const double r4 = r2 * r2, r6 = r4 * r2, r8 = r4 * r4;
    const double d6 = r6 + r06, d8 = r8 + r08;
    const double inv = msk / (d6 * d8);                     // one division for both terms
    const double t6 = d8 * inv, t8 = d6 * inv;
    const double h = s6 * t6 + s8 * qq * t8;                                  // E_pair = -C6 h
    const double dhr = -6.0 * s6 * r4 * t6 * t6 - 8.0 * s8 * qq * r6 * t8 * t8;  // (dh/dr) / r (0 outside)
    const double ep = -0.5 * c6 * h;
    ei += ep;
    JE[g] += ep;
    dedi -= dc6i * h;
    JD[g] -= dc6j * h;
    const double fr = -c6 * dhr;
    const double ax = fr * dx, ay = fr * dy, az = fr * dz;
    gxi -= ax; gyi -= ay; gzi -= az;
    JX[g] += ax; JY[g] += ay; JZ[g] += az;
    s00 += ax * dx; s01 += ax * dy; s02 += ax * dz; s11 += ay * dy; s12 += ay * dz; s22 += az * dz;
  }
  double* v = acc.v;
  v[0] += ei; v[1] += dedi; v[2] += gxi; v[3] += gyi; v[4] += gzi;
  v[5] += s00; v[6] += s01; v[7] += s02; v[8] += s11; v[9] += s12; v[10] += s22;
}

// The CN chain rule of atom i's pairs with ghosts [g0, g1) (owner > omin):
// (dE/dCN_i + dE/dCN_j) dCN_ij/dr to both gradients and the virial.
inline void chain_row(const double* __restrict GX, const double* __restrict GY, const double* __restrict GZ,
                      const double* __restrict GRC, const int* __restrict GO, const double* __restrict GD,
                      double* __restrict JX, double* __restrict JY, double* __restrict JZ, int g0, int g1,
                      int omin, double xi, double yi, double zi, double rci, double dedi, double rch2, Acc& acc) {
  const int g1p = padded(g0, g1);
  double gxi = 0.0, gyi = 0.0, gzi = 0.0, s00 = 0, s01 = 0, s02 = 0, s11 = 0, s12 = 0, s22 = 0;
#pragma omp simd reduction(+ : gxi, gyi, gzi, s00, s01, s02, s11, s12, s22)
  for (int g = g0; g < g1p; ++g) {
    const double dx = GX[g] - xi, dy = GY[g] - yi, dz = GZ[g] - zi;
    const double r2v = dx * dx + dy * dy + dz * dz;
    const bool in = before(g, g1) & (GO[g] > omin) & (r2v < rch2);
    const double r2 = in ? r2v : 1.0;
    const double r = std::sqrt(r2);
    const double rco = rci + GRC[g];
    const double e = vexp(-KCN * (rco / r - 1.0));
    const double f0 = 1.0 / (1.0 + e);
    const double dcn = in ? -KCN * rco / (r2 * r) * e * f0 * f0 : 0.0;   // (dCN_ij/dr) / r
    const double fr = (dedi + GD[g]) * dcn;
    const double ax = fr * dx, ay = fr * dy, az = fr * dz;
    gxi -= ax; gyi -= ay; gzi -= az;
    JX[g] += ax; JY[g] += ay; JZ[g] += az;
    s00 += ax * dx; s01 += ax * dy; s02 += ax * dz; s11 += ay * dy; s12 += ay * dz; s22 += az * dz;
  }
  double* v = acc.v;
  v[2] += gxi; v[3] += gyi; v[4] += gzi;
  v[5] += s00; v[6] += s01; v[7] += s02; v[8] += s11; v[9] += s12; v[10] += s22;
}

// The CN, dispersion and chain-rule passes; MR >= maxref reference CNs per element (zero
// weights beyond an element's own), NS >= ns species: compile-time bounds, so that the
// per-pair loops over them unroll and the ghost loops vectorise.
template <int MR, int NS>
int eval_t(const GhostList& L, const Args& A, int maxref, int nt) {
  const int n = L.n, ng = L.ng, ns = A.ns, ngp = ng + PAD;
  const double* x = A.x;
  const int* sp = A.sp;
  const double rcn2 = A.rc_cn * A.rc_cn, rd2 = A.rc_disp * A.rc_disp;
  const double rch2 = std::min(A.rc_chain * A.rc_chain, rcn2);
  std::vector<double> gx(ngp, 1e30), gy(ngp, 1e30), gz(ngp, 1e30), grc(ngp, 1.0), gded(ngp, 0.0),
      gw((size_t)MR * ngp, 0.0), gdw((size_t)MR * ngp, 0.0);
  std::vector<int> gsp(ngp, 0), gown(ngp, INT32_MIN);
  const double* c = A.cell;
  for (int g = 0; g < ng; ++g) {
    const int o = L.owner[g];
    const double s0 = L.shift[3 * g], s1 = L.shift[3 * g + 1], s2 = L.shift[3 * g + 2];
    gx[g] = x[3 * o] + s0 * c[0] + s1 * c[3] + s2 * c[6];
    gy[g] = x[3 * o + 1] + s0 * c[1] + s1 * c[4] + s2 * c[7];
    gz[g] = x[3 * o + 2] + s0 * c[2] + s1 * c[5] + s2 * c[8];
    gsp[g] = sp[o];
    gown[g] = o;
    grc[g] = A.rcov[sp[o]];
  }
  // j-side sums per thread and ghost: 5 arrays of ngp
  std::vector<double> jacc((size_t)nt * 5 * ngp);
  auto jarr = [&](int t, int k) { return &jacc[((size_t)t * 5 + k) * ngp]; };
  // add the ghosts' sums k0 .. k0 + nk - 1 of all threads to their owners' out[k] arrays
  auto fold = [&](int k0, int nk, double* const* out, const int* stride) {
    for (int t = 0; t < nt; ++t)
      for (int k = 0; k < nk; ++k) {
        const double* a = jarr(t, k0 + k);
        for (int g = 0; g < ng; ++g) out[k][(size_t)stride[k] * L.owner[g]] += a[g];
      }
  };
  std::vector<double> cn(n), ded(n), sig((size_t)6 * n);
  std::vector<double> w((size_t)n * MR, 0.0), dw((size_t)n * MR, 0.0);
  std::vector<double> u((size_t)n * NS * MR, 0.0), du((size_t)n * NS * MR, 0.0);
  double kq[MAXNS * MAXNS] = {0}, k6[MAXNS * MAXNS], k8[MAXNS * MAXNS];
  std::fill(k6, k6 + MAXNS * MAXNS, 1.0);
  std::fill(k8, k8 + MAXNS * MAXNS, 1.0);
  for (int a = 0; a < ns; ++a)
    for (int b = 0; b < ns; ++b) {
      const double qq = 3.0 * A.r4r2[a] * A.r4r2[b];
      const double r0 = A.a1 * std::sqrt(qq) + A.a2;
      const double r02 = r0 * r0;
      kq[a * NS + b] = qq;
      k6[a * NS + b] = r02 * r02 * r02;
      k8[a * NS + b] = r02 * r02 * r02 * r02;
    }
  const double *GX = gx.data(), *GY = gy.data(), *GZ = gz.data(), *GRC = grc.data(), *GW = gw.data(),
               *GDW = gdw.data(), *GD = gded.data();
  const int *GS = gsp.data(), *GO = gown.data();
  std::vector<double> nbad(nt, 0.0);
  // ---- coordination numbers
  parallel_for(nt, n, 16, [&](int t, int i) {
    const int hi = L.home[i];
    double cni = 0.0;
    for (size_t q = L.ro[1][i]; q < L.ro[1][i + 1]; ++q)
      cn_row(GX, GY, GZ, GRC, GO, jarr(t, 0), L.rg[1][2 * q], L.rg[1][2 * q + 1], q == L.ro[1][i] ? i : -1,
             GX[hi], GY[hi], GZ[hi], A.rcov[sp[i]], rcn2, cni, nbad[t]);
    cn[i] = cni;
  });
  for (int t = 0; t < nt; ++t)
    if (nbad[t] > 0.0) return 2;
  {
    double* o[1] = {cn.data()};
    const int st[1] = {1};
    fold(0, 1, o, st);
  }
  // ---- Gaussian weights per atom and their CN derivatives; u_i[t][b] = sum_a w_ia C6ref[s_i, t, a, b]
  for (int i = 0; i < n; ++i) {
    const int s = sp[i], nr = A.nref[s];
    double norm = 0.0, dnorm = 0.0, g[MR], dg[MR];
    for (int a = 0; a < nr; ++a) {
      const double d = cn[i] - A.refcn[s * maxref + a];
      g[a] = std::exp(-WF * d * d);
      dg[a] = -2.0 * WF * d * g[a];
      norm += g[a];
      dnorm += dg[a];
    }
    if (norm > 1e-300) {
      for (int a = 0; a < nr; ++a) {
        w[(size_t)i * MR + a] = g[a] / norm;
        dw[(size_t)i * MR + a] = (dg[a] * norm - g[a] * dnorm) / (norm * norm);
      }
    } else {  // far from every reference: the one with the largest CN
      int best = 0;
      for (int a = 1; a < nr; ++a)
        if (A.refcn[s * maxref + a] > A.refcn[s * maxref + best]) best = a;
      w[(size_t)i * MR + best] = 1.0;
    }
    for (int t = 0; t < ns; ++t)
      for (int b = 0; b < maxref; ++b) {
        double ac = 0.0, dac = 0.0;
        for (int a = 0; a < nr; ++a) {
          const double cc = A.c6ref[(((size_t)s * ns + t) * maxref + a) * maxref + b];
          ac += w[(size_t)i * MR + a] * cc;
          dac += dw[(size_t)i * MR + a] * cc;
        }
        u[((size_t)i * NS + t) * MR + b] = ac;
        du[((size_t)i * NS + t) * MR + b] = dac;
      }
  }
  for (int g = 0; g < ng; ++g)
    for (int b = 0; b < MR; ++b) {
      gw[(size_t)b * ngp + g] = w[(size_t)L.owner[g] * MR + b];
      gdw[(size_t)b * ngp + g] = dw[(size_t)L.owner[g] * MR + b];
    }
  // ---- dispersion: energy, gradient, virial and dE/dCN
  std::fill(jacc.begin(), jacc.end(), 0.0);
  parallel_for(nt, n, 16, [&](int t, int i) {
    const int hi = L.home[i], si = sp[i];
    Acc acc;
    for (size_t q = L.ro[2][i]; q < L.ro[2][i + 1]; ++q)
      disp_row<MR, NS>(GX, GY, GZ, GS, GO, GW, GDW, ngp, jarr(t, 0), jarr(t, 1), jarr(t, 2), jarr(t, 3),
                       jarr(t, 4), L.rg[2][2 * q], L.rg[2][2 * q + 1], q == L.ro[2][i] ? i : -1, GX[hi], GY[hi],
                       GZ[hi], rd2, A.s6, A.s8, kq + si * NS, k6 + si * NS, k8 + si * NS,
                       &u[(size_t)i * NS * MR], &du[(size_t)i * NS * MR], acc);
    A.energies[i] = acc.v[0];
    ded[i] = acc.v[1];
    for (int k = 0; k < 3; ++k) A.grad[3 * i + k] = acc.v[2 + k];
    for (int k = 0; k < 6; ++k) sig[6 * (size_t)i + k] = acc.v[5 + k];
  });
  {
    double* o[5] = {A.energies, ded.data(), A.grad, A.grad + 1, A.grad + 2};
    const int st[5] = {1, 1, 3, 3, 3};
    fold(0, 5, o, st);
  }
  for (int g = 0; g < ng; ++g) gded[g] = ded[L.owner[g]];
  // ---- the CN chain rule over the chain-rule pairs
  std::fill(jacc.begin(), jacc.end(), 0.0);
  parallel_for(nt, n, 16, [&](int t, int i) {
    const int hi = L.home[i];
    Acc acc;
    for (size_t q = L.ro[0][i]; q < L.ro[0][i + 1]; ++q)
      chain_row(GX, GY, GZ, GRC, GO, GD, jarr(t, 2), jarr(t, 3), jarr(t, 4), L.rg[0][2 * q], L.rg[0][2 * q + 1],
                q == L.ro[0][i] ? i : -1, GX[hi], GY[hi], GZ[hi], A.rcov[sp[i]], ded[i], rch2, acc);
    for (int k = 0; k < 3; ++k) A.grad[3 * i + k] += acc.v[2 + k];
    for (int k = 0; k < 6; ++k) sig[6 * (size_t)i + k] += acc.v[5 + k];
  });
  {
    double* o[3] = {A.grad, A.grad + 1, A.grad + 2};
    const int st[3] = {3, 3, 3};
    fold(2, 3, o, st);
  }
  double s[6] = {0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < 6; ++k) s[k] += sig[6 * (size_t)i + k];
  const double full[9] = {s[0], s[1], s[2], s[1], s[3], s[4], s[2], s[4], s[5]};
  for (int k = 0; k < 9; ++k) A.sigma[k] = full[k];
  for (int i = 0; i < n; ++i) A.cn_out[i] = cn[i];
  return 0;
}

}  // namespace

extern "C" {

// Two-body D3(BJ) over a ghost list with nthreads OpenMP threads (the same numbers for any
// count). Returns 0, 2 when two atoms coincide, 3 when an element has more than 5 reference
// CNs or a structure more than 8 species.
//  x (n,3) current positions, cell (3,3) current cell rows; sp (n,) species index in [0, ns)
//  nref (ns,), refcn (ns, maxref), c6ref (ns, ns, maxref, maxref), r4r2 (ns,): C8 = 3 C6 r4r2_i r4r2_j
//  rcov (ns,) covalent radii of the counting function; s6, s8, a1, a2 BJ parameters;
//  rc_disp, rc_cn, rc_chain cutoffs (each at most the list's radius for it); pairs farther
//  than rc_chain add to the CN but not to its chain rule (dCN/dr ~ 1e-6 / Å there).
//  Out: energies (n,) (half of each pair to each atom), grad (n,3), sigma (3,3) = sum over
//  pairs of dE/dr_ij (x) r_ij, cn (n,).
int d3_eval(void* list, const double* x, const double* cell, const int* sp, int ns, int maxref,
            const int* nref, const double* refcn, const double* c6ref, const double* r4r2,
            const double* rcov, double s6, double s8, double a1, double a2, double rc_disp,
            double rc_cn, double rc_chain, double* energies, double* grad, double* sigma,
            double* cn_out, int nthreads) {
  const GhostList& L = *static_cast<GhostList*>(list);
  const Args A{x, cell, sp, ns, nref, refcn, c6ref, r4r2, rcov, s6, s8, a1, a2, rc_disp, rc_cn,
               rc_chain, energies, grad, sigma, cn_out};
  const int nt = std::max(1, nthreads);
  if (ns > MAXNS || maxref > 5) return 3;    // Grimme's table: at most 5 reference CNs
  if (ns == 1) return eval_t<5, 1>(L, A, maxref, nt);
  if (ns == 2) return eval_t<5, 2>(L, A, maxref, nt);
  if (ns == 3) return eval_t<5, 3>(L, A, maxref, nt);
  return eval_t<5, MAXNS>(L, A, maxref, nt);
}

}  // extern "C"
