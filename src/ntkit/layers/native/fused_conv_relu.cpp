// ntkit: one fused pass of a [Conv2d (odd kh x kw, stride 1, "same"), ABReLU(a, b)] layer
// pair on zero-padded covariance arrays (see ntkit/layers/conv_fused.py for the math).
//
//   S~ = scale * sum_{a,b} S[window a,b] + b2              (scale = W_std^2 / (kh kw))
//   T~ = scale * sum_{a,b} T[window a,b] (+ S~ when the conv layer is trainable)
//   rho = S~ r1 r2,  theta = arccos rho                     (r = 1/sqrt(per-position variance))
//   S' = hs S~ + c (sqrt(1 - rho^2) - theta rho) g1 g2      (g = sqrt(per-position variance))
//   T' = T~ (hs - c theta)                                  (hs = (a^2+b^2)/2, c = (a-b)^2/(2 pi))
//
// The arrays keep a zero border of (kh-1)/2 x (kw-1)/2 on every spatial axis, so the "same"
// zero padding needs no masks; only interiors are written. Work is split into "rows", each a
// contiguous run of W outputs along the last axis:
//   regime 2 (pixel pairs, "full"):  arrays (m, Hp, Wp, Hp, Wp); row (k, i1, j1, i2);
//                                    r1, g1 (m, H, W) at (k, i1, j1); r2, g2 at (k, i2, :)
//   regime 0 (same positions, dense):  arrays (n1, n2, Hp, Wp); row (p1, p2, i);
//                                      r1, g1 (n1, H, W) at (p1, i, :); r2, g2 (n2, H, W)
//   regime 1 (same positions, paired): arrays (m, Hp, Wp); row (k, i); r1, r2 (m, H, W)
// Rows [row_begin, row_end) are computed, so that callers can split the work across threads.
// arccos: asin(y)/y = P(y^2) on [0, 1/2] (degree 12, fitted in 50-digit arithmetic), with
// acos x = pi/2 - asin x for |x| <= 1/2 and 2 asin(sqrt((1-|x|)/2)) above: branch-free, so
// that the compiler vectorizes the row loop.
#include <cmath>
#include <cstdint>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// asin(y)/y = P(y^2) on y in [0, 1/2], least-squares fits on 200 Chebyshev nodes of
// z = y^2 in [0, 1/4] in 50-digit arithmetic (mpmath). double: degree 12, max relative error
// 1.5e-17 (the coefficients of ntkit.layers.conv_fused.acos_poly); float: degree 5, 4.6e-9.
const double kAsin12[13] = {1.0, 0.1666666666666484, 0.07500000000404858, 0.044642856791215726,
                            0.03038196027149515, 0.02237173660319574, 0.017359969965541983,
                            0.013883027829435166, 0.0121816790888421, 0.006480855348779324,
                            0.01964239671205795, -0.016384436448802192, 0.032011340323281685};
const double kAsin5[6] = {0.9999999957384342, 0.16666787011719464, 0.07494534269355964,
                          0.045539009713168196, 0.02390936359009257, 0.04255359910635753};

// P(z) by Estrin's scheme (short dependency chains, so that vector lanes keep the FMA units
// busy).
inline double asin_over_y(double z) {
  const double* c = kAsin12;
  const double z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
  const double q0 = (c[0] + c[1] * z) + (c[2] + c[3] * z) * z2;
  const double q1 = (c[4] + c[5] * z) + (c[6] + c[7] * z) * z2;
  const double q2 = (c[8] + c[9] * z) + (c[10] + c[11] * z) * z2;
  return (q0 + q1 * z4) + (q2 + c[12] * z4) * z8;
}

inline float asin_over_y(float z) {
  const float c0 = float(kAsin5[0]), c1 = float(kAsin5[1]), c2 = float(kAsin5[2]),
              c3 = float(kAsin5[3]), c4 = float(kAsin5[4]), c5 = float(kAsin5[5]);
  const float z2 = z * z;
  return (c0 + c1 * z) + (c2 + c3 * z) * z2 + (c4 + c5 * z) * (z2 * z2);
}

// dst[j] += src[j]; a separate function so that the compiler vectorizes along j (inlined into
// the window loop it would vectorize across windows, with gathers)
template <class T>
__attribute__((noinline)) void add_row(T* __restrict dst, const T* __restrict src, int64_t W) {
  for (int64_t j = 0; j < W; ++j) dst[j] += src[j];
}

struct Consts {
  double scale, b2, hs, c, eps4;
};

template <class T, int NW, bool HAS_T_IN, bool WRITES_T, bool TRAINS>
inline void row(const T* __restrict s_in, const T* __restrict t_in, T* __restrict s_out,
                T* __restrict t_out, const int64_t* offs, int nw, const T* __restrict rr,
                const T* __restrict gg, int64_t W, const Consts& k, T* __restrict s,
                T* __restrict t) {
  const T scale = T(k.scale), b2 = T(k.b2), hs = T(k.hs), c = T(k.c);
  const T one_m = T(1) - T(k.eps4);
  const T half_pi = T(1.5707963267948966);
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
    for (int64_t j = 0; j < W; ++j) s[j] = T(0);
    for (int w = 0; w < nw; ++w) add_row(s, s_in + offs[w], W);
    if (HAS_T_IN) {
      for (int64_t j = 0; j < W; ++j) t[j] = T(0);
      for (int w = 0; w < nw; ++w) add_row(t, t_in + offs[w], W);
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    T acc = T(0), tacc = T(0);
    if (NW > 0) {
#pragma GCC unroll 32
      for (int w = 0; w < NP; ++w) acc += ps[w][j];
      if (HAS_T_IN) {
#pragma GCC unroll 32
        for (int w = 0; w < NP; ++w) tacc += pt[w][j];
      }
    } else {
      acc = s[j];
      tacc = HAS_T_IN ? t[j] : T(0);
    }
    const T sp = acc * scale + b2;
    T rho = sp * rr[j];
    rho = rho > T(1) ? T(1) : rho;
    rho = rho < T(-1) ? T(-1) : rho;
    rho = std::fabs(rho) > one_m ? std::copysign(T(1), rho) : rho;
    const T a = std::fabs(rho);
    const bool big = a > T(0.5);
    const T z = big ? (T(1) - a) * T(0.5) : a * a;
    const T y = big ? std::sqrt(z) : a;
    const T p = asin_over_y(z) * y;  // asin(y)
    // |rho| <= 1/2: pi/2 - asin(rho); above: 2 asin(.) for rho > 0, pi - 2 asin(.) below
    const T th = half_pi - std::copysign(big ? half_pi - T(2) * p : p, rho);
    T om = T(1) - rho * rho;
    om = om > T(0) ? om : T(0);
    const T sn = std::sqrt(om);
    s_out[j] = sp * hs + (sn - th * rho) * gg[j] * c;
    if (WRITES_T) {
      T tp = HAS_T_IN ? tacc * scale : T(0);
      if (TRAINS) tp += sp;
      t_out[j] = tp * (hs - th * c);
    }
  }
}

#define ROW_CALL(...)                                                            \
  switch (kh * kw) {                                                             \
    case 1: row<T, 1, HAS_T_IN, WRITES_T, TRAINS>(__VA_ARGS__); break;           \
    case 9: row<T, 9, HAS_T_IN, WRITES_T, TRAINS>(__VA_ARGS__); break;           \
    case 25: row<T, 25, HAS_T_IN, WRITES_T, TRAINS>(__VA_ARGS__); break;         \
    default: row<T, 0, HAS_T_IN, WRITES_T, TRAINS>(__VA_ARGS__); break;          \
  }

template <class T, bool HAS_T_IN, bool WRITES_T, bool TRAINS>
void rows(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* r1, const T* r2,
          const T* g1, const T* g2, const int64_t* geom, const Consts& k, int64_t r0,
          int64_t r1_end, double* acc) {
  const int64_t regime = geom[0], A = geom[1], B = geom[2], H = geom[3], W = geom[4],
                kh = geom[5], kw = geom[6];
  const int64_t ph = (kh - 1) / 2, pw = (kw - 1) / 2, Hp = H + 2 * ph, Wp = W + 2 * pw;
  std::vector<T> buf(6 * W);
  T *s = buf.data(), *t = s + W, *rr = t + W, *gg = rr + W, *red_s = gg + W, *red_t = red_s + W;
  std::vector<int64_t> offs(kh * kw);
  if (regime == 2) {
    const int64_t st_i2 = Wp, st_j1 = Hp * Wp, st_i1 = Wp * Hp * Wp, st_k = Hp * st_i1;
    for (int64_t a = 0; a < kh; ++a)
      for (int64_t b = 0; b < kw; ++b) offs[a * kw + b] = a * (st_i1 + st_i2) + b * (st_j1 + 1);
    const int64_t out_shift = ph * (st_i1 + st_i2) + pw * (st_j1 + 1);
    for (int64_t r = r0; r < r1_end; ++r) {
      const int64_t i2 = r % H, j1 = (r / H) % W, i1 = (r / (H * W)) % H, kk = r / (H * W * H);
      const int64_t base = kk * st_k + i1 * st_i1 + j1 * st_j1 + i2 * st_i2;
      const int64_t v1 = (kk * H + i1) * W + j1, v2 = (kk * H + i2) * W;
      const T ra = r1[v1], ga = g1[v1];
      for (int64_t j = 0; j < W; ++j) {
        rr[j] = ra * r2[v2 + j];
        gg[j] = ga * g2[v2 + j];
      }
      if (acc) {  // reduce: rows go to scratch, only their sums are kept
        ROW_CALL(s_in + base, t_in ? t_in + base : nullptr, red_s, WRITES_T ? red_t : nullptr,
                 offs.data(), int(kh * kw), rr, gg, W, k, s, t);
        T ss = T(0), ts = T(0);
        for (int64_t j = 0; j < W; ++j) ss += red_s[j];
        acc[0] += double(ss);
        if (WRITES_T) {
          for (int64_t j = 0; j < W; ++j) ts += red_t[j];
          acc[1] += double(ts);
        }
        continue;
      }
      ROW_CALL(s_in + base, t_in ? t_in + base : nullptr,
                                         s_out + base + out_shift,
                                         t_out ? t_out + base + out_shift : nullptr,
                                         offs.data(), int(kh * kw), rr, gg, W, k, s, t);
    }
  } else {
    for (int64_t a = 0; a < kh; ++a)
      for (int64_t b = 0; b < kw; ++b) offs[a * kw + b] = a * Wp + b;
    const int64_t out_shift = ph * Wp + pw;
    for (int64_t r = r0; r < r1_end; ++r) {
      const int64_t i = r % H, pair = r / H;  // pair: p1 * n2 + p2 (dense) or k (paired)
      const int64_t base = (pair * Hp + i) * Wp;
      int64_t v1, v2;
      if (regime == 0) {
        v1 = ((pair / B) * H + i) * W;
        v2 = ((pair % B) * H + i) * W;
      } else {
        v1 = v2 = (pair * H + i) * W;
      }
      for (int64_t j = 0; j < W; ++j) {
        rr[j] = r1[v1 + j] * r2[v2 + j];
        gg[j] = g1[v1 + j] * g2[v2 + j];
      }
      ROW_CALL(s_in + base, t_in ? t_in + base : nullptr,
                                         s_out + base + out_shift,
                                         t_out ? t_out + base + out_shift : nullptr,
                                         offs.data(), int(kh * kw), rr, gg, W, k, s, t);
    }
  }
  (void)A;
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
void dispatch(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* r1, const T* r2,
              const T* g1, const T* g2, const int64_t* geom, const double* consts, int64_t r0,
              int64_t r1_end, double* acc) {
  const Consts k{consts[0], consts[1], consts[2], consts[3], consts[4]};
  const bool trains = consts[5] != 0.0;
  const bool has_t = t_in != nullptr, writes_t = t_out != nullptr;
#define NTKIT_CALL(H_, W_, TR_) \
  rows<T, H_, W_, TR_>(s_in, t_in, s_out, t_out, r1, r2, g1, g2, geom, k, r0, r1_end, acc)
  if (!writes_t) NTKIT_CALL(false, false, false);
  else if (!has_t) { if (trains) NTKIT_CALL(false, true, true); else NTKIT_CALL(false, true, false); }
  else { if (trains) NTKIT_CALL(true, true, true); else NTKIT_CALL(true, true, false); }
#undef NTKIT_CALL
}

// Rows [row_begin, row_end) split over nthreads OpenMP threads. Loaded after torch, the
// library binds to the OpenMP runtime torch already loaded (same soname), so both share one
// thread pool instead of two pools competing for the cores.
// sums: nullptr, or (regime 2 only) {sum of S', sum of T'} over the rows, added to
// sums[0..1] instead of writing s_out/t_out (the GlobalAvgPool2d readout of a last layer).
template <class T>
void run(const T* s_in, const T* t_in, T* s_out, T* t_out, const T* r1, const T* r2,
         const T* g1, const T* g2, const int64_t* geom, const double* consts, int64_t r0,
         int64_t r1_end, int nthreads, double* sums) {
#ifdef _OPENMP
  if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
    {
      const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
      const int64_t n = r1_end - r0;
      double acc[2] = {0.0, 0.0};
      dispatch<T>(s_in, t_in, s_out, t_out, r1, r2, g1, g2, geom, consts, r0 + n * id / nt,
                  r0 + n * (id + 1) / nt, sums ? acc : nullptr);
      if (sums) {
#pragma omp critical(ntkit_sums)
        {
          sums[0] += acc[0];
          sums[1] += acc[1];
        }
      }
    }
    return;
  }
#endif
  (void)nthreads;
  double acc[2] = {0.0, 0.0};
  dispatch<T>(s_in, t_in, s_out, t_out, r1, r2, g1, g2, geom, consts, r0, r1_end,
              sums ? acc : nullptr);
  if (sums) {
    sums[0] += acc[0];
    sums[1] += acc[1];
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

}  // namespace

extern "C" {
// geom: {C, H, W, ph, pw}; a, b: (C, H, W); out: (H+2ph, W+2pw, H+2ph, W+2pw), interior set
void ntkit_pair_input_f32(const float* a, const float* b, float* out, const int64_t* geom,
                          int nthreads) {
  outer<float>(a, b, out, geom, nthreads);
}

void ntkit_pair_input_f64(const double* a, const double* b, double* out, const int64_t* geom,
                          int nthreads) {
  outer<double>(a, b, out, geom, nthreads);
}

// geom: {regime, A, B, H, W, kh, kw} (A, B: n1, n2 for regime 0; m, 0 otherwise)
// consts: {scale, b2, half_sum, c, eps4, trainable}
int ntkit_abi_version() { return 4; }

int ntkit_has_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

void ntkit_conv_relu_rows_f32(const float* s_in, const float* t_in, float* s_out, float* t_out,
                              const float* r1, const float* r2, const float* g1,
                              const float* g2, const int64_t* geom, const double* consts,
                              int64_t row_begin, int64_t row_end, int nthreads, double* sums) {
  run<float>(s_in, t_in, s_out, t_out, r1, r2, g1, g2, geom, consts, row_begin, row_end,
             nthreads, sums);
}

void ntkit_conv_relu_rows_f64(const double* s_in, const double* t_in, double* s_out,
                              double* t_out, const double* r1, const double* r2,
                              const double* g1, const double* g2, const int64_t* geom,
                              const double* consts, int64_t row_begin, int64_t row_end,
                              int nthreads, double* sums) {
  run<double>(s_in, t_in, s_out, t_out, r1, r2, g1, g2, geom, consts, row_begin, row_end,
              nthreads, sums);
}
}
