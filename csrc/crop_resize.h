// The arithmetic of the fused crop + bilinear resize, shared by the CPU (.cpp) and CUDA (.cu)
// kernels: one copy of the math, so the CPU tests cover what the GPU computes.
//
// Convention: an output y[b, n, c, i, j] equals
//   F.interpolate(x[b:b+1, :, t:t+h, l:l+w], size=(oh, ow), mode="bilinear", align_corners=False)
// i.e. the source coordinate of an output coordinate is clamped at the *crop* border, the way
// PyTorch treats a crop that is a tensor of its own (roi_align and grid_sample clamp at the map
// border instead, and so differ at the crop edges).
//
// Evaluation order (both devices): a horizontal lerp on each of the two source rows, then a
// vertical blend of the two results; the backward sums, for one input element, the horizontal
// adjoint first (over output columns j), then the vertical one (over output rows i), then the
// crops n in index order. The CPU kernels reuse the partial sums across elements but keep this
// order, so both devices add the same terms in the same sequence.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HFCN_HD __host__ __device__ __forceinline__
#else
#define HFCN_HD inline
#endif

namespace hfcn {

// Whether window (t, l, h, w) lies inside an in_h x in_w map with a positive size: the rule of
// the host check (crop_resize_host.h) and of the CUDA kernels' device-side check.
HFCN_HD bool box_fits(int64_t t, int64_t l, int64_t h, int64_t w, int64_t in_h, int64_t in_w) {
  return h >= 1 && w >= 1 && t >= 0 && l >= 0 && t <= in_h - h && l <= in_w - w;
}

// The nearest window that fits (in_h, in_w >= 1): what the CUDA kernels compute with when a
// device-side box does not fit, so that they never read or write outside the map whatever the
// boxes hold (the bad box is reported by the next call; see crop_resize_cuda.cu).
HFCN_HD void clamp_box(int64_t& t, int64_t& l, int64_t& h, int64_t& w, int64_t in_h, int64_t in_w) {
  t = t < 0 ? 0 : (t > in_h - 1 ? in_h - 1 : t);
  l = l < 0 ? 0 : (l > in_w - 1 ? in_w - 1 : l);
  h = h < 1 ? 1 : (h > in_h - t ? in_h - t : h);
  w = w < 1 ? 1 : (w > in_w - l ? in_w - l : w);
}

// Source taps (i0, i1) and weights (w0, w1) of output coordinate `dst` when `in_size` pixels
// are resized to `out_size`: PyTorch's area_pixel_compute_source_index with
// align_corners=False (scale = in/out, src = scale * (dst + 0.5) - 0.5, clamped below at 0), and
// its right-border rule (i1 = i0 when i0 is the last pixel). Equal sizes copy exactly.
template <typename acc_t>
HFCN_HD void source_taps(int64_t dst, int64_t in_size, int64_t out_size, int64_t& i0,
                         int64_t& i1, acc_t& w0, acc_t& w1) {
  if (in_size == out_size) {
    i0 = dst;
    i1 = dst;
    w0 = acc_t(1);
    w1 = acc_t(0);
    return;
  }
  const acc_t scale = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t src = scale * (static_cast<acc_t>(dst) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  i0 = static_cast<int64_t>(src);  // src >= 0, so truncation is floor
  if (i0 > in_size - 1) i0 = in_size - 1;
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  w1 = src - static_cast<acc_t>(i0);
  if (w1 > acc_t(1)) w1 = acc_t(1);
  w0 = acc_t(1) - w1;
}

// Weight with which output coordinate `dst` reads input coordinate `src`; false if it does not
// read it. When both taps fall on `src` (right border, or equal sizes) the weights add up,
// which is exactly the derivative of w0 * v + w1 * v.
template <typename acc_t>
HFCN_HD bool tap_weight(int64_t dst, int64_t src, int64_t in_size, int64_t out_size, acc_t& w) {
  int64_t i0, i1;
  acc_t w0, w1;
  source_taps<acc_t>(dst, in_size, out_size, i0, i1, w0, w1);
  if (i0 != src && i1 != src) return false;
  w = (i0 == src ? w0 : acc_t(0)) + (i1 == src ? w1 : acc_t(0));
  return true;
}

// A superset [lo, hi] of the output coordinates that read input coordinate `src`. Output j
// reads src only if floor(scale * (j + 0.5) - 0.5) is src - 1 or src; inverting that bound
// and widening by one on each side absorbs rounding. Callers filter with tap_weight.
HFCN_HD void reader_range(int64_t src, int64_t in_size, int64_t out_size, int64_t& lo,
                          int64_t& hi) {
  if (in_size == out_size) {
    lo = src;
    hi = src;
    return;
  }
  const double inv = static_cast<double>(out_size) / static_cast<double>(in_size);
  const double first = (static_cast<double>(src) - 0.5) * inv - 0.5;
  const double last = (static_cast<double>(src) + 1.5) * inv - 0.5;
  lo = static_cast<int64_t>(first < 0.0 ? 0.0 : first) - 1;
  hi = static_cast<int64_t>(last < 0.0 ? 0.0 : last) + 1;
  if (lo < 0) lo = 0;
  if (hi > out_size - 1) hi = out_size - 1;
}

// The two-tap interpolation used by both passes: w0 * a + w1 * b. Templated on the value type
// so that the CPU kernels apply the very same expression to SIMD vectors.
template <typename T>
HFCN_HD T two_tap(T a, T b, T w0, T w1) {
  return w0 * a + w1 * b;
}

// One adjoint term: sum + w * g (the backward's accumulation step, scalar or SIMD).
template <typename T>
HFCN_HD T accumulate(T sum, T w, T g) {
  return sum + w * g;
}

// Horizontal lerp of one row: the first pass of an output element.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t lerp_row(const scalar_t* row, int64_t c0, int64_t c1, acc_t w0, acc_t w1) {
  return two_tap<acc_t>(static_cast<acc_t>(row[c0]), static_cast<acc_t>(row[c1]), w0, w1);
}

// Vertical blend of two lerped rows: the second pass of an output element.
template <typename acc_t>
HFCN_HD acc_t blend(acc_t upper, acc_t lower, acc_t w0, acc_t w1) {
  return two_tap<acc_t>(upper, lower, w0, w1);
}

// One output element from its taps: the two source rows (already offset to the crop's left
// column), the crop-relative source columns and all four weights. The CUDA forward reads the
// taps from per-block tables; output_element computes them on the spot.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t output_from_taps(const scalar_t* upper_row, const scalar_t* lower_row, int64_t c0,
                               int64_t c1, acc_t wc0, acc_t wc1, acc_t wr0, acc_t wr1) {
  const acc_t upper = lerp_row<scalar_t, acc_t>(upper_row, c0, c1, wc0, wc1);
  const acc_t lower = lerp_row<scalar_t, acc_t>(lower_row, c0, c1, wc0, wc1);
  return blend<acc_t>(upper, lower, wr0, wr1);
}

// One output element, computed directly. `plane` is the channel's [H, W] map, row stride `W`;
// the crop is (t, l, h, w) and the output is oh x ow.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t output_element(const scalar_t* plane, int64_t W, int64_t t, int64_t l, int64_t h,
                             int64_t w, int64_t oh, int64_t ow, int64_t i, int64_t j) {
  int64_t r0, r1, c0, c1;
  acc_t wr0, wr1, wc0, wc1;
  source_taps<acc_t>(i, h, oh, r0, r1, wr0, wr1);
  source_taps<acc_t>(j, w, ow, c0, c1, wc0, wc1);
  const scalar_t* base = plane + t * W + l;
  return output_from_taps<scalar_t, acc_t>(base + r0 * W, base + r1 * W, c0, c1, wc0, wc1, wr0, wr1);
}

// Horizontal adjoint: how much output row `grow` (ow values) sends to crop column `kk`.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t column_adjoint(const scalar_t* grow, int64_t kk, int64_t w, int64_t ow) {
  int64_t lo, hi;
  reader_range(kk, w, ow, lo, hi);
  acc_t sum = acc_t(0);
  for (int64_t j = lo; j <= hi; ++j) {
    acc_t wt;
    if (tap_weight<acc_t>(j, kk, w, ow, wt)) sum = accumulate<acc_t>(sum, wt, static_cast<acc_t>(grow[j]));
  }
  return sum;
}

// Most readers reader_range can return for one source coordinate when in_size pixels are
// resized to out_size: its range spans at most 2 * out / in + 4 outputs (the inverted tap bound,
// widened by one on each side), and in * reader_capacity <= 2 * out + 5 * in, which sizes a
// table of all in_size coordinates' readers (both bounds checked exhaustively for sizes up to
// 256 when this was written).
HFCN_HD int64_t reader_capacity(int64_t in_size, int64_t out_size) {
  return in_size == out_size ? 1 : (2 * out_size + in_size - 1) / in_size + 4;
}

// Readers of source coordinate `src` as a table row: the output coordinates (increasing) and
// weights that column_adjoint/input_grad_element would visit, at most reader_capacity of them.
template <typename acc_t>
HFCN_HD int32_t reader_list(int64_t src, int64_t in_size, int64_t out_size, int32_t* index,
                            acc_t* weight) {
  int64_t lo, hi;
  reader_range(src, in_size, out_size, lo, hi);
  int32_t n = 0;
  for (int64_t d = lo; d <= hi; ++d) {
    acc_t wt;
    if (tap_weight<acc_t>(d, src, in_size, out_size, wt)) {
      index[n] = static_cast<int32_t>(d);
      weight[n] = wt;
      ++n;
    }
  }
  return n;
}

// input_grad_element from reader tables (the CUDA backward, which builds them once per crop
// instead of once per input element): the same terms in the same order.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t input_grad_from_tables(const scalar_t* gplane, int64_t ow, const int32_t* row_index,
                                     const acc_t* row_weight, int32_t n_rows,
                                     const int32_t* col_index, const acc_t* col_weight,
                                     int32_t n_cols) {
  acc_t sum = acc_t(0);
  for (int32_t a = 0; a < n_rows; ++a) {
    const scalar_t* grow = gplane + row_index[a] * ow;
    acc_t inner = acc_t(0);
    for (int32_t q = 0; q < n_cols; ++q)
      inner = accumulate<acc_t>(inner, col_weight[q], static_cast<acc_t>(grow[col_index[q]]));
    sum = accumulate<acc_t>(sum, row_weight[a], inner);
  }
  return sum;
}

// One crop's contribution to the input gradient at crop-relative (rr, kk), computed directly.
// `gplane` is the crop's [oh, ow] output gradient.
template <typename scalar_t, typename acc_t>
HFCN_HD acc_t input_grad_element(const scalar_t* gplane, int64_t rr, int64_t kk, int64_t h,
                                 int64_t w, int64_t oh, int64_t ow) {
  int64_t lo, hi;
  reader_range(rr, h, oh, lo, hi);
  acc_t sum = acc_t(0);
  for (int64_t i = lo; i <= hi; ++i) {
    acc_t wt;
    if (tap_weight<acc_t>(i, rr, h, oh, wt))
      sum = accumulate<acc_t>(sum, wt, column_adjoint<scalar_t, acc_t>(gplane + i * ow, kk, w, ow));
  }
  return sum;
}

}  // namespace hfcn
