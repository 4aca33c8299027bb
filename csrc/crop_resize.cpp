// hfcn_bench::crop_resize: schema, CPU kernels and the CPU registration.
//
// The CPU kernels walk the per-crop separable tables built from crop_resize.h (the same
// functions the CUDA kernels call element by element) and parallelise over the B*C input
// planes: each thread owns whole planes, reads its plane once for all N crops and, in the
// backward, sums every crop's contribution into the plane in crop order. No two threads touch
// the same output, so results are bitwise identical whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "crop_resize.h"
#include "crop_resize_host.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__AVX512F__) || defined(__AVX2__))
#define HFCN_SIMD 1
#include <immintrin.h>
#endif

namespace hfcn {
namespace {

// SIMD fast path (float32 on x86 with AVX2/AVX-512, GCC): one crop row (or output-gradient
// row) is at most two registers wide on the paper's shapes, so the horizontal taps become
// in-register table lookups (vpermps / vpermt2ps) instead of per-element gathers. The lanes
// apply two_tap/accumulate from crop_resize.h, the expressions of the scalar and CUDA paths.
#ifdef HFCN_SIMD
namespace simd {
#if defined(__AVX512F__)
constexpr int64_t K = 16;
#else
constexpr int64_t K = 8;
#endif
typedef float vf __attribute__((vector_size(K * 4)));
typedef int32_t vi __attribute__((vector_size(K * 4)));
typedef float vf_u __attribute__((vector_size(K * 4), aligned(4)));
inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
inline vf splat(float a) { return vf{} + a; }
// Lanes idx (each in [0, 2K)) of the 2K floats lo:hi.
inline vf lookup(vf lo, vf hi, vi idx) { return __builtin_shuffle(lo, hi, idx); }

// Masked loads and stores touch only the first n lanes (n <= K): no read past a row, no write
// into a neighbour's output, and masked-off lanes never fault.
#if defined(__AVX512F__)
inline unsigned lane_mask(int64_t n) { return n >= K ? 0xFFFFu : ((1u << n) - 1u); }
inline vf load_n(const float* p, int64_t n) { return (vf)_mm512_maskz_loadu_ps((__mmask16)lane_mask(n), p); }
inline void store_n(float* p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, (__mmask16)lane_mask(n), (__m512)v); }
#else
inline __m256i lane_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}
inline vf load_n(const float* p, int64_t n) { return (vf)_mm256_maskload_ps(p, lane_mask(n)); }
inline void store_n(float* p, vf v, int64_t n) { _mm256_maskstore_ps(p, lane_mask(n), (__m256)v); }
#endif

// The `len` (<= 2K) floats at p as the table lo:hi (lanes past len are zero).
inline void load_row(const float* p, int64_t len, vf& lo, vf& hi) {
  lo = load_n(p, len);
  hi = len > K ? load_n(p + K, len - K) : vf{};
}

}  // namespace simd
#endif


// Forward taps of one axis of one crop: output coordinate -> two source coordinates
// (crop-relative) and their weights.
template <typename acc_t>
struct AxisTaps {
  std::vector<int32_t> i0, i1;
  std::vector<acc_t> w0, w1;

  void build(int64_t in_size, int64_t out_size, int64_t offset) {
    i0.resize(out_size);
    i1.resize(out_size);
    w0.resize(out_size);
    w1.resize(out_size);
    for (int64_t d = 0; d < out_size; ++d) {
      int64_t a, b;
      source_taps<acc_t>(d, in_size, out_size, a, b, w0[d], w1[d]);
      i0[d] = static_cast<int32_t>(a + offset);
      i1[d] = static_cast<int32_t>(b + offset);
    }
  }
};

// Adjoint taps of one axis of one crop: source coordinate -> the output coordinates that read
// it (increasing) and their weights, in CSR form. Built from tap_weight/reader_range, so the
// terms and their order are those of column_adjoint/input_grad_element.
template <typename acc_t>
struct AxisReaders {
  std::vector<int32_t> start, index;
  std::vector<acc_t> weight;

  void build(int64_t in_size, int64_t out_size) {
    start.assign(1, 0);
    index.clear();
    weight.clear();
    for (int64_t s = 0; s < in_size; ++s) {
      int64_t lo, hi;
      reader_range(s, in_size, out_size, lo, hi);
      for (int64_t d = lo; d <= hi; ++d) {
        acc_t wt;
        if (tap_weight<acc_t>(d, s, in_size, out_size, wt)) {
          index.push_back(static_cast<int32_t>(d));
          weight.push_back(wt);
        }
      }
      start.push_back(static_cast<int32_t>(index.size()));
    }
  }
};

struct Box {
  int64_t t, l, h, w;
};

std::vector<Box> read_boxes(const at::Tensor& boxes) {
  const at::Tensor b = boxes.contiguous();
  const int64_t* p = b.data_ptr<int64_t>();
  std::vector<Box> out(b.numel() / 4);
  for (size_t k = 0; k < out.size(); ++k) out[k] = {p[4 * k], p[4 * k + 1], p[4 * k + 2], p[4 * k + 3]};
  return out;
}

// Planes per task so that a task moves at least ~32 KiB of output: small enough to balance
// two threads on the paper's shape, large enough to amortise the task overhead.
int64_t plane_grain(int64_t per_plane_elems) {
  return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, per_plane_elems));
}

#ifdef HFCN_SIMD
// Forward lookup tables of one crop: per block of K output columns, the crop-relative source
// columns and weights of both taps (lanes past ow: index 0, weight 0, never stored).
struct VecColumnTaps {
  std::vector<simd::vi> i0, i1;
  std::vector<simd::vf> w0, w1;

  template <typename acc_t>
  void build(const AxisTaps<acc_t>& taps, int64_t left, int64_t ow) {
    const int64_t blocks = (ow + simd::K - 1) / simd::K;
    i0.assign(blocks, simd::vi{});
    i1.assign(blocks, simd::vi{});
    w0.assign(blocks, simd::vf{});
    w1.assign(blocks, simd::vf{});
    for (int64_t j = 0; j < ow; ++j) {
      i0[j / simd::K][j % simd::K] = static_cast<int32_t>(taps.i0[j] - left);
      i1[j / simd::K][j % simd::K] = static_cast<int32_t>(taps.i1[j] - left);
      w0[j / simd::K][j % simd::K] = static_cast<float>(taps.w0[j]);
      w1[j / simd::K][j % simd::K] = static_cast<float>(taps.w1[j]);
    }
  }
};
#endif

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const std::vector<Box>& boxes, bool per_sample,
                    at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t N = y.size(1), oh = y.size(3), ow = y.size(4);
  const int64_t n_tables = static_cast<int64_t>(boxes.size());
#ifdef HFCN_SIMD
  constexpr bool kSimd = std::is_same<scalar_t, float>::value;
  const int64_t stride = kSimd ? (ow + simd::K - 1) / simd::K * simd::K : ow;
#else
  const int64_t stride = ow;
#endif

  // Per crop: column taps (absolute columns), and the crop rows the vertical pass reads
  // ("needed", each lerped once) with the output rows' taps remapped into that compact list.
  std::vector<AxisTaps<acc_t>> rows(n_tables), cols(n_tables);
  std::vector<std::vector<int32_t>> needed(n_tables), q0(n_tables), q1(n_tables);
  int64_t max_needed = 1;
  for (int64_t k = 0; k < n_tables; ++k) {
    const Box& bx = boxes[k];
    rows[k].build(bx.h, oh, 0);
    cols[k].build(bx.w, ow, bx.l);
    std::vector<int32_t> slot(bx.h, -1);
    for (int64_t i = 0; i < oh; ++i) slot[rows[k].i0[i]] = slot[rows[k].i1[i]] = 0;
    for (int64_t r = 0; r < bx.h; ++r) {
      if (slot[r] < 0) continue;
      slot[r] = static_cast<int32_t>(needed[k].size());
      needed[k].push_back(static_cast<int32_t>((bx.t + r) * W));
    }
    for (int64_t i = 0; i < oh; ++i) {
      q0[k].push_back(slot[rows[k].i0[i]] * static_cast<int32_t>(stride));
      q1[k].push_back(slot[rows[k].i1[i]] * static_cast<int32_t>(stride));
    }
    max_needed = std::max<int64_t>(max_needed, static_cast<int64_t>(needed[k].size()));
  }
#ifdef HFCN_SIMD
  std::vector<VecColumnTaps> vcols(kSimd ? n_tables : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(vcols.size()); ++k)
    if (boxes[k].w <= 2 * simd::K) vcols[k].build(cols[k], boxes[k].l, ow);
#endif

  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, B * C, plane_grain(N * oh * ow), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> lerped_buf(max_needed * stride + stride);
    acc_t* __restrict__ lerped = lerped_buf.data();
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / C, c = p % C;
      const scalar_t* __restrict__ plane = xp + p * H * W;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = per_sample ? b * N + n : n;
        const int64_t n_rows = static_cast<int64_t>(needed[k].size());
        const int32_t* __restrict__ row_off = needed[k].data();
        const int64_t left = boxes[k].l;
        bool done = false;
#ifdef HFCN_SIMD
        if constexpr (kSimd) {
          if (boxes[k].w <= 2 * simd::K) {
            const VecColumnTaps& vt = vcols[k];
            const int64_t blocks = static_cast<int64_t>(vt.i0.size());
            for (int64_t q = 0; q < n_rows; ++q) {
              simd::vf lo, hi;
              simd::load_row(plane + row_off[q] + left, boxes[k].w, lo, hi);
              float* dst = lerped + q * stride;
              for (int64_t jb = 0; jb < blocks; ++jb)
                simd::store(dst + jb * simd::K,
                            two_tap<simd::vf>(simd::lookup(lo, hi, vt.i0[jb]),
                                              simd::lookup(lo, hi, vt.i1[jb]), vt.w0[jb], vt.w1[jb]));
            }
            done = true;
          }
        }
#endif
        if (!done) {
          const int32_t* __restrict__ c0 = cols[k].i0.data();
          const int32_t* __restrict__ c1 = cols[k].i1.data();
          const acc_t* __restrict__ wc0 = cols[k].w0.data();
          const acc_t* __restrict__ wc1 = cols[k].w1.data();
          for (int64_t q = 0; q < n_rows; ++q) {
            const scalar_t* __restrict__ row = plane + row_off[q];
            acc_t* __restrict__ dst = lerped + q * stride;
            for (int64_t j = 0; j < ow; ++j)
              dst[j] = lerp_row<scalar_t, acc_t>(row, c0[j], c1[j], wc0[j], wc1[j]);
          }
        }
        const int32_t* __restrict__ up = q0[k].data();
        const int32_t* __restrict__ lo = q1[k].data();
        const acc_t* __restrict__ wr0 = rows[k].w0.data();
        const acc_t* __restrict__ wr1 = rows[k].w1.data();
        scalar_t* __restrict__ out = yp + ((b * N + n) * C + c) * oh * ow;
#ifdef HFCN_SIMD
        if constexpr (kSimd) {
          // Whole-register stores straight into the output: a row's spill past ow lands in the
          // next row of the same plane, which is written right after; only the stores that
          // would leave the plane are masked.
          const int64_t blocks = stride / simd::K;
          const int64_t total = oh * ow;
          for (int64_t i = 0; i < oh; ++i) {
            const simd::vf a = simd::splat(wr0[i]), bw = simd::splat(wr1[i]);
            for (int64_t jb = 0; jb < blocks; ++jb) {
              const simd::vf v = blend<simd::vf>(simd::load(lerped + up[i] + jb * simd::K),
                                                 simd::load(lerped + lo[i] + jb * simd::K), a, bw);
              const int64_t e = i * ow + jb * simd::K;
              const int64_t row_left = ow - jb * simd::K;
              if (e + simd::K <= total) simd::store(out + e, v);
              else simd::store_n(out + e, v, std::min<int64_t>(row_left, total - e));
            }
          }
          continue;
        }
#endif
        for (int64_t i = 0; i < oh; ++i) {
          const acc_t* __restrict__ upper = lerped + up[i];
          const acc_t* __restrict__ lower = lerped + lo[i];
          const acc_t a = wr0[i], bw = wr1[i];
          scalar_t* __restrict__ orow = out + i * ow;
#pragma omp simd
          for (int64_t j = 0; j < ow; ++j)
            orow[j] = static_cast<scalar_t>(blend<acc_t>(upper[j], lower[j], a, bw));
        }
      }
    }
  });
}

#ifdef HFCN_SIMD
// Backward lookup tables of one crop: per block of K crop columns kk, up to R reader columns j
// (indices into the output-gradient row, increasing) with their weights; lanes with fewer
// readers are masked out by count, so each lane adds exactly the terms of column_adjoint.
struct VecColumnReaders {
  int64_t R = 0;
  std::vector<simd::vi> index, count;
  std::vector<simd::vf> weight;

  template <typename acc_t>
  void build(const AxisReaders<acc_t>& readers, int64_t w) {
    const int64_t blocks = (w + simd::K - 1) / simd::K;
    R = 0;
    for (int64_t kk = 0; kk < w; ++kk) R = std::max<int64_t>(R, readers.start[kk + 1] - readers.start[kk]);
    index.assign(blocks * R, simd::vi{});
    weight.assign(blocks * R, simd::vf{});
    count.assign(blocks, simd::vi{});
    for (int64_t kk = 0; kk < w; ++kk) {
      const int64_t kb = kk / simd::K, lane = kk % simd::K;
      const int32_t first = readers.start[kk], n = readers.start[kk + 1] - first;
      count[kb][lane] = n;
      for (int32_t r = 0; r < n; ++r) {
        index[kb * R + r][lane] = readers.index[first + r];
        weight[kb * R + r][lane] = static_cast<float>(readers.weight[first + r]);
      }
    }
  }
};
#endif

template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const std::vector<Box>& boxes, bool per_sample,
                     at::Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), oh = g.size(3), ow = g.size(4);
  const int64_t H = gx.size(2), W = gx.size(3);
  const int64_t n_tables = static_cast<int64_t>(boxes.size());
  // float32/float64 accumulate straight into the output plane; half types in an acc buffer.
  constexpr bool kInPlace = std::is_same<acc_t, scalar_t>::value;
#ifdef HFCN_SIMD
  constexpr bool kSimd = std::is_same<scalar_t, float>::value;
#endif

  std::vector<AxisReaders<acc_t>> rows(n_tables), cols(n_tables);
  int64_t max_w = 1;
  for (int64_t k = 0; k < n_tables; ++k) {
    rows[k].build(boxes[k].h, oh);
    cols[k].build(boxes[k].w, ow);
    max_w = std::max(max_w, boxes[k].w);
  }
  int64_t stride = max_w;
#ifdef HFCN_SIMD
  std::vector<VecColumnReaders> vcols(kSimd && ow <= 2 * simd::K ? n_tables : 0);
  for (int64_t k = 0; k < static_cast<int64_t>(vcols.size()); ++k)
    if (boxes[k].w <= 2 * simd::K) vcols[k].build(cols[k], boxes[k].w);
  if (kSimd) stride = (max_w + simd::K - 1) / simd::K * simd::K;
#endif

  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* gxp = gx.data_ptr<scalar_t>();
  at::parallel_for(0, B * C, plane_grain(H * W + N * oh * ow), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total_buf(kInPlace ? 0 : H * W), col_adj_buf(oh * stride), contrib_buf(stride);
    acc_t* __restrict__ col_adj = col_adj_buf.data();  // [i][kk]: horizontal adjoint of row i
    acc_t* __restrict__ contrib = contrib_buf.data();
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / C, c = p % C;
      scalar_t* __restrict__ out = gxp + p * H * W;
      acc_t* __restrict__ total;
      if constexpr (kInPlace) total = reinterpret_cast<acc_t*>(out);
      else total = total_buf.data();
      for (int64_t e = 0; e < H * W; ++e) total[e] = acc_t(0);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = per_sample ? b * N + n : n;
        const Box bx = boxes[k];
        const scalar_t* __restrict__ gplane = gp + ((b * N + n) * C + c) * oh * ow;
        const int32_t* __restrict__ rs = rows[k].start.data();
        const int32_t* __restrict__ ri = rows[k].index.data();
        const acc_t* __restrict__ rw = rows[k].weight.data();
#ifdef HFCN_SIMD
        if constexpr (kSimd) {
          if (!vcols.empty() && bx.w <= 2 * simd::K) {
            const VecColumnReaders& vr = vcols[k];
            const int64_t blocks = static_cast<int64_t>(vr.count.size());
            for (int64_t i = 0; i < oh; ++i) {
              simd::vf lo, hi;
              simd::load_row(gplane + i * ow, ow, lo, hi);
              for (int64_t kb = 0; kb < blocks; ++kb) {
                simd::vf sum = simd::vf{};
                for (int64_t r = 0; r < vr.R; ++r) {
                  const simd::vf term = accumulate<simd::vf>(sum, vr.weight[kb * vr.R + r],
                                                            simd::lookup(lo, hi, vr.index[kb * vr.R + r]));
                  sum = (simd::vi{} + static_cast<int32_t>(r)) < vr.count[kb] ? term : sum;
                }
                simd::store(col_adj + i * stride + kb * simd::K, sum);
              }
            }
            for (int64_t r = 0; r < bx.h; ++r) {
              float* dst = total + (bx.t + r) * W + bx.l;
              for (int64_t kb = 0; kb < blocks; ++kb) {
                simd::vf acc = simd::vf{};
                for (int32_t e = rs[r]; e < rs[r + 1]; ++e)
                  acc = accumulate<simd::vf>(acc, simd::splat(rw[e]),
                                             simd::load(col_adj + ri[e] * stride + kb * simd::K));
                const int64_t n_lanes = bx.w - kb * simd::K;
                simd::store_n(dst + kb * simd::K, simd::load_n(dst + kb * simd::K, n_lanes) + acc, n_lanes);
              }
            }
            continue;
          }
        }
#endif
        const int32_t* __restrict__ cs = cols[k].start.data();
        const int32_t* __restrict__ ci = cols[k].index.data();
        const acc_t* __restrict__ cw = cols[k].weight.data();
        for (int64_t i = 0; i < oh; ++i) {
          const scalar_t* __restrict__ grow = gplane + i * ow;
          acc_t* __restrict__ dst = col_adj + i * stride;
          for (int64_t kk = 0; kk < bx.w; ++kk) {
            acc_t sum = acc_t(0);
            for (int32_t e = cs[kk]; e < cs[kk + 1]; ++e)
              sum = accumulate<acc_t>(sum, cw[e], static_cast<acc_t>(grow[ci[e]]));
            dst[kk] = sum;
          }
        }
        for (int64_t r = 0; r < bx.h; ++r) {
          for (int64_t kk = 0; kk < bx.w; ++kk) contrib[kk] = acc_t(0);
          for (int32_t e = rs[r]; e < rs[r + 1]; ++e) {
            const acc_t wt = rw[e];
            const acc_t* __restrict__ src = col_adj + ri[e] * stride;
#pragma omp simd
            for (int64_t kk = 0; kk < bx.w; ++kk) contrib[kk] = accumulate<acc_t>(contrib[kk], wt, src[kk]);
          }
          acc_t* __restrict__ dst = total + (bx.t + r) * W + bx.l;
#pragma omp simd
          for (int64_t kk = 0; kk < bx.w; ++kk) dst[kk] += contrib[kk];
        }
      }
      if constexpr (!kInPlace) {
        for (int64_t e = 0; e < H * W; ++e) out[e] = static_cast<scalar_t>(total[e]);
      }
    }
  });
}

at::Tensor crop_resize_cpu(const at::Tensor& x_in, const at::Tensor& boxes, int64_t out_h,
                           int64_t out_w) {
  check_forward_args(x_in, boxes, out_h, out_w);
  const at::Tensor x = x_in.contiguous();
  const int64_t N = boxes.size(-2);
  at::Tensor y = at::empty({x.size(0), N, x.size(1), out_h, out_w}, x.options());
  if (y.numel() == 0) return y;
  const std::vector<Box> bx = read_boxes(boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cpu", [&] {
    forward_kernel<scalar_t>(x, bx, boxes.dim() == 3, y);
  });
  return y;
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad_in, const at::Tensor& boxes,
                                    int64_t in_h, int64_t in_w) {
  check_backward_args(grad_in, boxes, in_h, in_w);
  const at::Tensor g = grad_in.contiguous();
  at::Tensor gx = at::empty({g.size(0), g.size(2), in_h, in_w}, g.options());
  if (gx.numel() == 0) return gx;
  if (g.numel() == 0) return gx.zero_();
  const std::vector<Box> bx = read_boxes(boxes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward_cpu", [&] {
    backward_kernel<scalar_t>(g, bx, boxes.dim() == 3, gx);
  });
  return gx;
}

}  // namespace
}  // namespace hfcn

// crop_resize: windows (top, left, height, width) of x[B, C, H, W], each resized bilinearly
// (align_corners=False, clamped at the crop border) -> [B, N, C, out_h, out_w].
// crop_resize_backward: its adjoint, grad[B, N, C, oh, ow] -> [B, C, in_h, in_w]. The op is
// linear, so each is the other's derivative (autograd is registered from Python).
TORCH_LIBRARY(hfcn_bench, m) {
  m.def("crop_resize(Tensor x, Tensor boxes, int out_h, int out_w) -> Tensor");
  m.def("crop_resize_backward(Tensor grad, Tensor boxes, int in_h, int in_w) -> Tensor");
}

TORCH_LIBRARY_IMPL(hfcn_bench, CPU, m) {
  m.impl("crop_resize", &hfcn::crop_resize_cpu);
  m.impl("crop_resize_backward", &hfcn::crop_resize_backward_cpu);
}
