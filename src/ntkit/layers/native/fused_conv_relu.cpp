// ntkit: one fused pass of a [Conv2d (odd kh x kw, stride 1, "same"), ABReLU(a, b)] layer
// pair on zero-padded covariance arrays (see ntkit/layers/conv_fused.py for the math).
//
//   S~ = scale * sum_{a,b} S[window a,b] + b2              (scale = W_std^2 / (kh kw))
//   T~ = scale * sum_{a,b} T[window a,b] (+ S~ when the conv layer is trainable)
//   rho = S~ r1 r2,  theta = arccos rho                     (r = 1/sqrt(per-position variance))
//   S' = hs S~ + c (sqrt(1 - rho^2) - theta rho) g1 g2      (g = sqrt(per-position variance))
//   T' = T~ (hs - c theta)                                  (hs = (a^2+b^2)/2, c = (a-b)^2/(2 pi))
//
// The arrays keep a zero border of ph = (kh-1)/2, pw = (kw-1)/2 on every spatial axis, so the
// "same" zero padding needs no masks in the stencil. The work is split into planes, each the
// last two (padded) axes (H, Wp) of one leading index, walked as ONE flat run of
// L = (H-1) Wp + W entries: the entries that fall on padding columns are computed too and
// written as zeros (a 0/1 mask), which keeps the borders zero and lets the compiler vectorize
// one long loop per plane.
//   regime 2 (pixel pairs, "full"):    arrays (m, Hp, Wp, Hp, Wp); plane (k, i1, j1);
//                                      r1, g1 (m, H, W) at (k, i1, j1); r2, g2 at (k, :, :)
//   regime 0 (same positions, dense):  arrays (n1, n2, Hp, Wp); plane (p1, p2);
//                                      r1, g1 (n1, H, W) at p1; r2, g2 (n2, H, W) at p2
//   regime 1 (same positions, paired): arrays (m, Hp, Wp); plane k; r1, r2 (m, H, W) at k
//
// Without the activation (consts[5] == 0) a pass writes the convolution alone, S~ and T~; a
// 1x1 window with scale 1 and no bias then copies, and with the activation it applies the
// ReLU-family map alone. The border may be wider than the window's half (ph >= (kh-1)/2):
// arrays of one resolution share one border whatever the kernel.
//
// The arc-cosine map (rho -> theta, sqrt(1 - rho^2) - theta rho) is ntkit.layers.relu_map's
// fast drop-in, with its edge conventions and constants: the asin polynomials, the snapping of
// |rho| to 1 and the ABI number come from "ntkit_relu_map.h", which conv_native generates from
// relu_map at build time into the build directory (the numbers are written nowhere else).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ntkit_relu_map.h"  // NTKIT_ABI_VERSION, kSnapUlps, kAsinF64[13], kAsinF32[6]

namespace {

static_assert(sizeof(kAsinF64) == 13 * sizeof(double), "asin_over_y(double) is degree 12");
static_assert(sizeof(kAsinF32) == 6 * sizeof(double), "asin_over_y(float) is degree 5");

// asin(y)/y = P(y^2) on y in [0, 1/2] (relu_map.ASIN_COEFS_F64, degree 12) by Estrin's scheme
// (short dependency chains keep the FMA units busy)
__attribute__((always_inline)) inline double asin_over_y(double z) {
  const double* c = kAsinF64;
  const double z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
  const double q0 = (c[0] + c[1] * z) + (c[2] + c[3] * z) * z2;
  const double q1 = (c[4] + c[5] * z) + (c[6] + c[7] * z) * z2;
  const double q2 = (c[8] + c[9] * z) + (c[10] + c[11] * z) * z2;
  return (q0 + q1 * z4) + (q2 + c[12] * z4) * z8;
}

// float: degree 5 (relu_map.ASIN_COEFS_F32, relative error 4.6e-9)
__attribute__((always_inline)) inline float asin_over_y(float z) {
  const float c0 = float(kAsinF32[0]), c1 = float(kAsinF32[1]), c2 = float(kAsinF32[2]),
              c3 = float(kAsinF32[3]), c4 = float(kAsinF32[4]), c5 = float(kAsinF32[5]);
  const float z2 = z * z;
  return (c0 + c1 * z) + (c2 + c3 * z) * z2 + (c4 + c5 * z) * (z2 * z2);
}

// The arc-cosine map of one correlation, branch-free (vectorizes): rho is set to +-1 where
// |rho| > 1 - kSnapUlps eps (clamping included); theta = arccos rho by the polynomial (for
// |rho| <= 1/2, pi/2 - asin rho; above, 2 asin(sqrt((1-|rho|)/2)), exact in 1 - |rho|).
// Sets theta and returns S = sqrt(1 - rho^2) - theta rho. Always inlined: a call inside the
// loops would keep them from vectorizing.
template <class T>
__attribute__((always_inline)) inline T arccos_map(T rho, T& theta) {
  const T one_m = T(1) - T(kSnapUlps) * std::numeric_limits<T>::epsilon();
  const T half_pi = T(1.5707963267948966);
  rho = std::fabs(rho) > one_m ? std::copysign(T(1), rho) : rho;
  const T a = std::fabs(rho);
  const bool big = a > T(0.5);
  const T z = big ? (T(1) - a) * T(0.5) : a * a;
  const T y = big ? std::sqrt(z) : a;
  const T p = asin_over_y(z) * y;  // asin(y)
  // |rho| <= 1/2: pi/2 - asin(rho); above: 2 asin(.) for rho > 0, pi - 2 asin(.) below
  theta = half_pi - std::copysign(big ? half_pi - T(2) * p : p, rho);
  T om = T(1) - rho * rho;
  om = om > T(0) ? om : T(0);
  return std::sqrt(om) - theta * rho;
}

// dst[j] += src[j]; a separate function so that the compiler vectorizes along j (inlined into
// the window loop it would vectorize across windows, with gathers)
template <class T>
__attribute__((noinline)) void add_row(T* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
}

// sum_{w in [B, E)} p[w][j] as a balanced tree: dependency depth log2(E-B) instead of E-B
// additions (a chain of 9 dependent adds per vector, at 3-4 cycles each, was the bound)
template <class T, int B, int E>
inline T tree_sum(const T* const* p, int64_t j) {
  if constexpr (E - B == 1) {
    return p[B][j];
  } else {
    constexpr int M = B + (E - B) / 2;
    return tree_sum<T, B, M>(p, j) + tree_sum<T, M, E>(p, j);
  }
}

// operations (about: entries times window terms) below which a pass runs on one thread
constexpr int64_t kParallelWork = int64_t(1) << 18;

struct Consts {
  double scale, b2, hs, c;
};


// Per-plane factors: rr = ra * rb[idx], gg = ga * gb[idx] (full regime: ra, ga scalars, i.e.
// a_step = 0), rb/gb padded to (H, Wp) with zeros on the padding columns.
template <class T>
struct Factors {
  const T* ra;
  const T* ga;
  const T* rb;
  const T* gb;
};

template <class T, int NW, bool HAS_T_IN, bool WRITES_T, bool TRAINS, bool VEC_A, int MODE>
inline void plane(const T* __restrict s_in, const T* __restrict t_in, T* __restrict s_out,
                  T* __restrict t_out, const T* __restrict s_add, const T* __restrict t_add,
                  const int64_t* offs, int nw, const Factors<T>& f,
                  const T* __restrict mask, int64_t L, const Consts& k, T* __restrict s,
                  T* __restrict t) {
  // NW > 0: the window count is known at compile time (1x1, 3x3, 5x5 kernels) and the
  // stencil is summed in the main loop; NW == 0: any other size, summed into s/t first
  constexpr int NP = NW > 0 ? NW : 1;
  const T* ps[NP];
  const T* pt[NP];
  if (NW > 0) {
    for (int w = 0; w < NP; ++w) {
      ps[w] = s_in + offs[w];
      pt[w] = HAS_T_IN ? t_in + offs[w] : s_in;
    }
  } else {
    for (int64_t j = 0; j < L; ++j) s[j] = T(0);
    for (int w = 0; w < nw; ++w) add_row(s, s_in + offs[w], L);
    if (HAS_T_IN) {
      for (int64_t j = 0; j < L; ++j) t[j] = T(0);
      for (int w = 0; w < nw; ++w) add_row(t, t_in + offs[w], L);
    }
  }
  const T scale = T(k.scale), b2 = T(k.b2), hs = T(k.hs), c = T(k.c);
  const T* __restrict ra = f.ra;
  const T* __restrict ga = f.ga;
  const T* __restrict rb = f.rb;
  const T* __restrict gb = f.gb;
  const T ra0 = ra[0], ga0 = ga[0];
  // two 32-byte vectors per iteration: two independent dependency chains in flight
#pragma omp simd simdlen(64 / sizeof(T))
  for (int64_t j = 0; j < L; ++j) {
    T acc = T(0), tacc = T(0);
    if (NW > 0) {
      acc = tree_sum<T, 0, NP>(ps, j);
      if (HAS_T_IN) tacc = tree_sum<T, 0, NP>(pt, j);
    } else {
      acc = s[j];
      tacc = HAS_T_IN ? t[j] : T(0);
    }
    const T mk = mask[j];
    const T sp = (acc * scale + b2) * mk;
    if (MODE == 1) {
      const T rr = (VEC_A ? ra[j] : ra0) * rb[j];
      const T gg = (VEC_A ? ga[j] : ga0) * gb[j];
      T th;
      const T sm = arccos_map(sp * rr, th);
      s_out[j] = sp * hs + sm * gg * c;
      if (WRITES_T) {
        T tp = HAS_T_IN ? tacc * scale * mk : T(0);
        if (TRAINS) tp += sp;
        t_out[j] = tp * (hs - th * c);
      }
    } else {  // the convolution alone (MODE 0), or plus the addends (MODE 2)
      s_out[j] = MODE == 2 ? sp + s_add[j] : sp;
      if (WRITES_T) {
        T tp = HAS_T_IN ? tacc * scale * mk : T(0);
        if (TRAINS) tp += sp;
        t_out[j] = MODE == 2 ? tp + t_add[j] : tp;
      }
    }
  }
}

// rows (H, W) of src -> (H, Wp) of dst with zeros in columns W..Wp-1
template <class T>
void pad_rows(const T* src, T* dst, int64_t H, int64_t W, int64_t Wp) {
  for (int64_t i = 0; i < H; ++i)
    for (int64_t j = 0; j < Wp; ++j) dst[i * Wp + j] = j < W ? src[i * W + j] : T(0);
}

struct Geom {
  // ph, pw: the buffers' zero border (at least (kh-1)/2, (kw-1)/2); dh, dw: where the
  // windows start inside it (ph - (kh-1)/2, pw - (kw-1)/2)
  int64_t regime, A, B, H, W, kh, kw, ph, pw, Hp, Wp, L, dh, dw;
  int64_t planes() const { return regime == 2 ? A * H * W : (regime == 0 ? A * B : A); }
};

Geom make_geom(const int64_t* g) {
  Geom q;
  q.regime = g[0];
  q.A = g[1];
  q.B = g[2];
  q.H = g[3];
  q.W = g[4];
  q.kh = g[5];
  q.kw = g[6];
  q.ph = g[7];
  q.pw = g[8];
  q.dh = q.ph - (q.kh - 1) / 2;
  q.dw = q.pw - (q.kw - 1) / 2;
  q.Hp = q.H + 2 * q.ph;
  q.Wp = q.W + 2 * q.pw;
  q.L = (q.H - 1) * q.Wp + q.W;
  return q;
}

#define NTKIT_PLANE(VEC_A_, ...)                                                         \
  switch (nw) {                                                                          \
    case 1: plane<T, 1, HAS_T_IN, WRITES_T, TRAINS, VEC_A_, MODE>(__VA_ARGS__); break;    \
    case 9: plane<T, 9, HAS_T_IN, WRITES_T, TRAINS, VEC_A_, MODE>(__VA_ARGS__); break;    \
    case 25: plane<T, 25, HAS_T_IN, WRITES_T, TRAINS, VEC_A_, MODE>(__VA_ARGS__); break;  \
    default: plane<T, 0, HAS_T_IN, WRITES_T, TRAINS, VEC_A_, MODE>(__VA_ARGS__); break;   \
  }

// planes [p0, p1) of the layer. rp1/gp1/rp2/gp2: r and g padded to (H, Wp) per leading index
// (rp1/gp1 unused in the full regime). part: nullptr, or (reduce mode: outputs go to scratch
// and only their sums are kept) the per-plane sums {sum S', sum T'} at part[2p], part[2p+1],
// each summed serially along the plane: the same bits whatever thread computes the plane.
template <class T, bool HAS_T_IN, bool WRITES_T, bool TRAINS, int MODE>
void planes(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* s_add, const T* t_add,
            const T* r1, const T* g1,
            const T* rp1, const T* gp1, const T* rp2, const T* gp2, const T* mask,
            const Geom& q, const Consts& k, int64_t p0, int64_t p1, double* part) {
  const int nw = int(q.kh * q.kw);
  const int64_t L = q.L, HWp = q.H * q.Wp;
  std::vector<T> buf(4 * L);
  T *s = buf.data(), *t = s + L, *red_s = t + L, *red_t = red_s + L;
  std::vector<int64_t> offs(nw);
  if (q.regime == 2) {
    const int64_t st_i2 = q.Wp, st_j1 = q.Hp * q.Wp, st_i1 = q.Wp * q.Hp * q.Wp,
                  st_k = q.Hp * st_i1;
    for (int64_t a = 0; a < q.kh; ++a)
      for (int64_t b = 0; b < q.kw; ++b)
        offs[a * q.kw + b] = (a + q.dh) * (st_i1 + st_i2) + (b + q.dw) * (st_j1 + 1);
    const int64_t out_shift = q.ph * (st_i1 + st_i2) + q.pw * (st_j1 + 1);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j1 = p % q.W, i1 = (p / q.W) % q.H, kk = p / (q.W * q.H);
      const int64_t base = kk * st_k + i1 * st_i1 + j1 * st_j1;
      const int64_t v1 = (kk * q.H + i1) * q.W + j1;
      const Factors<T> f{r1 + v1, g1 + v1, rp2 + kk * HWp, gp2 + kk * HWp};
      T* so = part ? red_s : s_out + base + out_shift;
      T* to = part ? (WRITES_T ? red_t : nullptr) : (t_out ? t_out + base + out_shift : nullptr);
      const T* sa = s_add ? s_add + base + out_shift : nullptr;
      const T* ta = t_add ? t_add + base + out_shift : nullptr;
      NTKIT_PLANE(false, s_in + base, t_in ? t_in + base : nullptr, so, to, sa, ta, offs.data(),
                  nw, f, mask, L, k, s, t);
      if (part) {
        // vector partial sums (a fixed order for a given L and build, whatever the thread)
        double ss = 0.0, ts = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < L; ++j) ss += double(red_s[j]);
        if (WRITES_T) {
#pragma omp simd reduction(+ : ts)
          for (int64_t j = 0; j < L; ++j) ts += double(red_t[j]);
        }
        part[2 * p] = ss;
        part[2 * p + 1] = ts;
      }
    }
  } else {
    for (int64_t a = 0; a < q.kh; ++a)
      for (int64_t b = 0; b < q.kw; ++b) offs[a * q.kw + b] = (a + q.dh) * q.Wp + b + q.dw;
    const int64_t out_shift = q.ph * q.Wp + q.pw;
    for (int64_t p = p0; p < p1; ++p) {  // p: p1 * n2 + p2 (dense) or k (paired)
      const int64_t base = p * q.Hp * q.Wp;
      const int64_t ia = q.regime == 0 ? p / q.B : p, ib = q.regime == 0 ? p % q.B : p;
      const Factors<T> f{rp1 + ia * HWp, gp1 + ia * HWp, rp2 + ib * HWp, gp2 + ib * HWp};
      NTKIT_PLANE(true, s_in + base, t_in ? t_in + base : nullptr, s_out + base + out_shift,
                  t_out ? t_out + base + out_shift : nullptr,
                  s_add ? s_add + base + out_shift : nullptr,
                  t_add ? t_add + base + out_shift : nullptr, offs.data(), nw, f, mask, L, k,
                  s, t);
    }
  }
}
#undef NTKIT_PLANE

template <class T, int MODE>
void dispatch_t(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* s_add,
                const T* t_add, const T* r1, const T* g1,
                const T* rp1, const T* gp1, const T* rp2, const T* gp2, const T* mask,
                const Geom& q, const Consts& k, bool trains, int64_t p0, int64_t p1,
                double* part) {
  const bool has_t = t_in != nullptr, writes_t = t_out != nullptr;
#define NTKIT_CALL(H_, W_, TR_) \
  planes<T, H_, W_, TR_, MODE>(s_in, t_in, s_out, t_out, s_add, t_add, r1, g1, rp1, gp1, rp2, gp2, mask, q, k, p0, p1, part)
  if (!writes_t) NTKIT_CALL(false, false, false);
  else if (!has_t) { if (trains) NTKIT_CALL(false, true, true); else NTKIT_CALL(false, true, false); }
  else { if (trains) NTKIT_CALL(true, true, true); else NTKIT_CALL(true, true, false); }
#undef NTKIT_CALL
}

// mode (consts[5]): 1 the ReLU-family map follows the convolution; 0 the convolution alone
// is written; 2 the convolution plus the addends s_add (and t_add when T' is written), arrays
// of the outputs' shape (a branch's output added to the other branches' sum)
template <class T>
void dispatch(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* s_add, const T* t_add,
              const T* r1, const T* g1, const T* rp1, const T* gp1, const T* rp2, const T* gp2,
              const T* mask, const Geom& q, const Consts& k, bool trains, int mode, int64_t p0,
              int64_t p1, double* part) {
#define NTKIT_MODE(M_)                                                                       \
  dispatch_t<T, M_>(s_in, t_in, s_out, t_out, s_add, t_add, r1, g1, rp1, gp1, rp2, gp2, mask, q, \
                    k, trains, p0, p1, part)
  if (mode == 1) NTKIT_MODE(1);
  else if (mode == 2) NTKIT_MODE(2);
  else NTKIT_MODE(0);
#undef NTKIT_MODE
}

// One layer over all planes, split over nthreads OpenMP threads. Loaded after torch, the
// library binds to the OpenMP runtime torch already loaded (same soname), so both share one
// thread pool instead of two pools competing for the cores. sums: nullptr, or (regime 2) the
// {sum of S', sum of T'} over the layer's outputs, added to sums[0..1] instead of writing them
// (a last layer before GlobalAvgPool2d). Deterministic: every output is computed by one thread
// from the same operands, and the sums are per-plane partial sums added serially in plane
// order after the parallel loop, so the bits do not depend on the thread count.
template <class T>
void layer(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* s_add, const T* t_add,
           const T* r1, const T* r2,
           const T* g1, const T* g2, const int64_t* geom, const double* consts, int nthreads,
           double* sums) {
  const Geom q = make_geom(geom);
  const Consts k{consts[0], consts[1], consts[2], consts[3]};
  const bool trains = consts[4] != 0.0;
  const int mode = int(consts[5]);
  const int64_t HW = q.H * q.W, HWp = q.H * q.Wp;
  const int64_t n1 = q.A, n2 = q.regime == 0 ? q.B : q.A;
  // padded factors and the padding-column mask
  std::vector<T> fac(2 * (q.regime == 2 ? 0 : n1) * HWp + 2 * n2 * HWp + HWp);
  T* rp1 = fac.data();
  T* gp1 = rp1 + (q.regime == 2 ? 0 : n1) * HWp;
  T* rp2 = gp1 + (q.regime == 2 ? 0 : n1) * HWp;
  T* gp2 = rp2 + n2 * HWp;
  T* mask = gp2 + n2 * HWp;
  if (q.regime != 2)
    for (int64_t i = 0; i < n1; ++i) {
      pad_rows(r1 + i * HW, rp1 + i * HWp, q.H, q.W, q.Wp);
      pad_rows(g1 + i * HW, gp1 + i * HWp, q.H, q.W, q.Wp);
    }
  for (int64_t i = 0; i < n2; ++i) {
    pad_rows(r2 + i * HW, rp2 + i * HWp, q.H, q.W, q.Wp);
    pad_rows(g2 + i * HW, gp2 + i * HWp, q.H, q.W, q.Wp);
  }
  for (int64_t j = 0; j < HWp; ++j) mask[j] = (j % q.Wp) < q.W ? T(1) : T(0);
  const int64_t n = q.planes();
  std::vector<double> part(q.regime == 2 && sums ? 2 * n : 0);
  double* pp = part.empty() ? nullptr : part.data();
#ifdef _OPENMP
  // small layers run on one thread: waking the pool costs more than it saves (and, on a busy
  // machine, waits for a descheduled thread)
  if (nthreads > 1 && n > 1 && n * q.L * (q.kh * q.kw + 8) >= kParallelWork) {
#pragma omp parallel num_threads(nthreads)
    {
      const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
      dispatch<T>(s_in, t_in, s_out, t_out, s_add, t_add, r1, g1, rp1, gp1, rp2, gp2, mask, q,
                  k, trains, mode, n * id / nt, n * (id + 1) / nt, pp);
    }
  } else
#endif
  {
    dispatch<T>(s_in, t_in, s_out, t_out, s_add, t_add, r1, g1, rp1, gp1, rp2, gp2, mask, q, k,
                trains, mode, 0, n, pp);
  }
  (void)nthreads;
  if (pp) {
    double ss = 0.0, ts = 0.0;
    for (int64_t p = 0; p < n; ++p) {
      ss += pp[2 * p];
      ts += pp[2 * p + 1];
    }
    sums[0] += ss;
    sums[1] += ts;
  }
}

// The pixel-pair input covariance of one image pair, written into the interior of a padded
// (Hp, Wp, Hp, Wp) array: out[i1+ph, j1+pw, i2+ph, j2+pw] = (1/C) sum_c a[c,i1,j1] b[c,i2,j2]
// (a, b: (C, H, W)); rows (i1, j1, i2) in [r0, r1_end).
template <class T>
void outer_rows(const T* a, const T* b, T* out, int64_t C, int64_t H, int64_t W, int64_t ph,
                int64_t pw, int64_t r0, int64_t r1_end) {
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw, HW = H * W;
  const T inv_c = T(1) / T(C);
  for (int64_t r = r0; r < r1_end; ++r) {
    const int64_t i2 = r % H, j1 = (r / H) % W, i1 = r / (H * W);
    T* __restrict o = out + (((i1 + ph) * Wp + j1 + pw) * Hp + i2 + ph) * Wp + pw;
    const T* __restrict bb = b + i2 * W;
    const T a0 = a[i1 * W + j1];
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) o[j] = a0 * bb[j];
    for (int64_t c = 1; c < C; ++c) {
      const T ac = a[c * HW + i1 * W + j1];
      const T* __restrict bc = bb + c * HW;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) o[j] += ac * bc[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) o[j] *= inv_c;
  }
}

template <class T>
void outer(const T* a, const T* b, T* out, const int64_t* geom, int nthreads) {
  const int64_t C = geom[0], H = geom[1], W = geom[2], ph = geom[3], pw = geom[4];
  const int64_t rows = H * W * H;
#ifdef _OPENMP
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    {
      const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
      outer_rows<T>(a, b, out, C, H, W, ph, pw, rows * id / nt, rows * (id + 1) / nt);
    }
    return;
  }
#endif
  (void)nthreads;
  outer_rows<T>(a, b, out, C, H, W, ph, pw, 0, rows);
}

// The ReLU-family maps on a dense (n1, n2) block of pre-activation covariances, in place:
// rho = c r1_i r2_j, S = arccos_map(rho, theta),
// cov <- hs c + k S g1_i g2_j,  dot <- hs - k theta (if dot). Rows split over threads; each
// entry is computed by one thread from the same operands (deterministic).
template <class T>
void arccos_dense(T* cov, T* dot, const T* r1, const T* r2, const T* g1, const T* g2,
                  int64_t n1, int64_t n2, double hs_, double k_, int nthreads) {
  const T hs = T(hs_), kk = T(k_);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
#endif
  for (int64_t i = 0; i < n1; ++i) {
    T* __restrict c = cov + i * n2;
    T* __restrict d = dot ? dot + i * n2 : nullptr;
    const T ra = r1[i], ga = g1[i];
    const T* __restrict rb = r2;
    const T* __restrict gb = g2;
#pragma omp simd simdlen(64 / sizeof(T))
    for (int64_t j = 0; j < n2; ++j) {
      const T cv = c[j];
      T th;
      const T sm = arccos_map(cv * ra * rb[j], th);
      c[j] = hs * cv + kk * sm * (ga * gb[j]);
      if (d) d[j] = hs - kk * th;
    }
  }
  (void)nthreads;
}

// Strided window sums of one pair's pixel-pair array, from the interior of a zero-bordered
// (H+2P, W+2P, H+2P, W+2P) array into the interior of a (Ho+2P, Wo+2P, Ho+2P, Wo+2P) one:
//   box == 0 (a convolution's diagonal filter):
//     out[o, q, o', q'] = scale sum_{a<kh, b<kw} in[s_h o + a - lo_h, s_w q + b - lo_w,
//                                                   s_h o' + a - lo_h, s_w q' + b - lo_w] + b2
//   box == 1 (average pooling: each member's own window):
//     out[o, q, o', q'] = scale sum_{a, b, a', b'} in[s_h o + a - lo_h, s_w q + b - lo_w,
//                                                     s_h o' + a' - lo_h, s_w q' + b' - lo_w]
// (indices of the unpadded arrays; the border holds the zero padding, lo <= P). Each output is
// computed by one thread, its terms added in a fixed order: the same bits for every thread
// count.
// dst[j] += src[s j], j < n (unit stride split out so that it vectorizes)
template <class T>
inline void add_strided(T* __restrict dst, const T* __restrict src, int64_t s, int64_t n) {
  if (s == 1) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] += src[s * j];
  }
}

template <class T>
void window4(const T* in, T* out, const int64_t* g, double scale_, double b2_, int nthreads) {
  const int64_t H = g[0], W = g[1], P = g[2], Ho = g[3], Wo = g[4], kh = g[5], kw = g[6],
                sh = g[7], sw = g[8], lo_h = g[9], lo_w = g[10], box = g[11];
  const int64_t Wp = W + 2 * P, Hp = H + 2 * P, Wop = Wo + 2 * P, Hop = Ho + 2 * P;
  const int64_t si2 = Wp, sj1 = Hp * Wp, si1 = Wp * sj1;
  const int64_t oi2 = Wop, oj1 = Hop * Wop, oi1 = Wop * oj1;
  const T scale = T(scale_), b2 = T(b2_);
  const int64_t terms = box ? kh * kw * kh * kw : kh * kw;
  const bool par = nthreads > 1 && Ho * Wo > 1 && Ho * Wo * Ho * Wo * (terms + 2) >= kParallelWork;
  (void)par;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) if (par)
#endif
  for (int64_t r = 0; r < Ho * Wo; ++r) {
    const int64_t o = r / Wo, q = r % Wo;
    const T* base = in + (P + sh * o - lo_h) * si1 + (P + sw * q - lo_w) * sj1;
    T* orow = out + (P + o) * oi1 + (P + q) * oj1 + P * oi2 + P;
    for (int64_t o2 = 0; o2 < Ho; ++o2) {
      // the row of outputs (o, q, o2, :) accumulates in place, one window term at a time
      T* __restrict dst = orow + o2 * oi2;
      const T* b0 = base + (P + sh * o2 - lo_h) * si2 + P - lo_w;
      for (int64_t q2 = 0; q2 < Wo; ++q2) dst[q2] = T(0);
      for (int64_t a = 0; a < kh; ++a)
        for (int64_t b = 0; b < kw; ++b) {
          if (box) {
            for (int64_t a2 = 0; a2 < kh; ++a2)
              for (int64_t b2i = 0; b2i < kw; ++b2i)
                add_strided(dst, b0 + a * si1 + b * sj1 + a2 * si2 + b2i, sw, Wo);
          } else {
            add_strided(dst, b0 + a * (si1 + si2) + b * (sj1 + 1), sw, Wo);
          }
        }
#pragma omp simd
      for (int64_t q2 = 0; q2 < Wo; ++q2) dst[q2] = dst[q2] * scale + b2;
    }
  }
  (void)nthreads;
}

}  // namespace

extern "C" {
// geom: {H, W, P, Ho, Wo, kh, kw, sh, sw, lo_h, lo_w, box}; see window4
void ntkit_window_f32(const float* in, float* out, const int64_t* geom, double scale, double b2,
                      int nthreads) {
  window4<float>(in, out, geom, scale, b2, nthreads);
}

void ntkit_window_f64(const double* in, double* out, const int64_t* geom, double scale,
                      double b2, int nthreads) {
  window4<double>(in, out, geom, scale, b2, nthreads);
}

// cov (n1, n2) contiguous, updated in place; dot (n1, n2) or null; r = 1/sqrt(v) (0 where
// v = 0) and g = sqrt(v) per row (r1, g1: n1) and column (r2, g2: n2); hs = (a^2+b^2)/2,
// k = (a-b)^2/(2 pi)
void ntkit_arccos_dense_f32(float* cov, float* dot, const float* r1, const float* r2,
                            const float* g1, const float* g2, int64_t n1, int64_t n2,
                            double hs, double k, int nthreads) {
  arccos_dense<float>(cov, dot, r1, r2, g1, g2, n1, n2, hs, k, nthreads);
}

void ntkit_arccos_dense_f64(double* cov, double* dot, const double* r1, const double* r2,
                            const double* g1, const double* g2, int64_t n1, int64_t n2,
                            double hs, double k, int nthreads) {
  arccos_dense<double>(cov, dot, r1, r2, g1, g2, n1, n2, hs, k, nthreads);
}

int ntkit_abi_version() { return NTKIT_ABI_VERSION; }

// the shared constants this library was built with: out[0..12] kAsinF64, out[13..18] kAsinF32,
// out[19] kSnapUlps (checked against ntkit.layers.relu_map on load)
void ntkit_constants(double* out) {
  for (int i = 0; i < 13; ++i) out[i] = kAsinF64[i];
  for (int i = 0; i < 6; ++i) out[13 + i] = kAsinF32[i];
  out[19] = double(kSnapUlps);
}

int ntkit_has_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// geom: {regime, A, B, H, W, kh, kw, ph, pw} (A, B: n1, n2 for regime 0; m, 0 otherwise;
// ph, pw: the arrays' zero border, at least (kh-1)/2, (kw-1)/2)
// consts: {scale, b2, half_sum, c, trainable, mode} (mode: see dispatch); s_add, t_add: the
// addends of mode 2 (else null)
void ntkit_conv_relu_f32(const float* s_in, const float* t_in, float* s_out, float* t_out,
                         const float* s_add, const float* t_add, const float* r1,
                         const float* r2, const float* g1, const float* g2,
                         const int64_t* geom, const double* consts, int nthreads,
                         double* sums) {
  layer<float>(s_in, t_in, s_out, t_out, s_add, t_add, r1, r2, g1, g2, geom, consts, nthreads,
               sums);
}

void ntkit_conv_relu_f64(const double* s_in, const double* t_in, double* s_out, double* t_out,
                         const double* s_add, const double* t_add, const double* r1,
                         const double* r2, const double* g1, const double* g2,
                         const int64_t* geom, const double* consts, int nthreads,
                         double* sums) {
  layer<double>(s_in, t_in, s_out, t_out, s_add, t_add, r1, r2, g1, g2, geom, consts, nthreads,
                sums);
}

// geom: {C, H, W, ph, pw}; a, b: (C, H, W); out: (H+2ph, W+2pw, H+2ph, W+2pw), interior set
void ntkit_pair_input_f32(const float* a, const float* b, float* out, const int64_t* geom,
                          int nthreads) {
  outer<float>(a, b, out, geom, nthreads);
}

void ntkit_pair_input_f64(const double* a, const double* b, double* out, const int64_t* geom,
                          int nthreads) {
  outer<double>(a, b, out, geom, nthreads);
}
}
