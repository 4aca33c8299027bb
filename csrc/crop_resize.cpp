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
#include <vector>

#include "crop_resize.h"
#include "crop_resize_host.h"

namespace hfcn {
namespace {

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

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const std::vector<Box>& boxes, bool per_sample,
                    at::Tensor& y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t N = y.size(1), oh = y.size(3), ow = y.size(4);
  const int64_t n_tables = static_cast<int64_t>(boxes.size());

  std::vector<AxisTaps<acc_t>> rows(n_tables), cols(n_tables);
  // Which crop rows the vertical pass reads: only those are lerped horizontally.
  std::vector<std::vector<int32_t>> needed(n_tables);
  int64_t max_h = 1;
  for (int64_t k = 0; k < n_tables; ++k) {
    const Box& bx = boxes[k];
    rows[k].build(bx.h, oh, 0);
    cols[k].build(bx.w, ow, bx.l);
    std::vector<char> mark(bx.h, 0);
    for (int64_t i = 0; i < oh; ++i) mark[rows[k].i0[i]] = mark[rows[k].i1[i]] = 1;
    for (int64_t r = 0; r < bx.h; ++r)
      if (mark[r]) needed[k].push_back(static_cast<int32_t>(r));
    max_h = std::max(max_h, bx.h);
  }

  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  at::parallel_for(0, B * C, plane_grain(N * oh * ow), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> lerped(max_h * ow);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / C, c = p % C;
      const scalar_t* plane = xp + p * H * W;
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = per_sample ? b * N + n : n;
        const Box& bx = boxes[k];
        const AxisTaps<acc_t>& rt = rows[k];
        const AxisTaps<acc_t>& ct = cols[k];
        const int32_t* c0 = ct.i0.data();
        const int32_t* c1 = ct.i1.data();
        const acc_t* wc0 = ct.w0.data();
        const acc_t* wc1 = ct.w1.data();
        for (int32_t r : needed[k]) {
          const scalar_t* row = plane + (bx.t + r) * W;
          acc_t* dst = lerped.data() + r * ow;
          for (int64_t j = 0; j < ow; ++j) dst[j] = lerp_row<scalar_t, acc_t>(row, c0[j], c1[j], wc0[j], wc1[j]);
        }
        scalar_t* out = yp + ((b * N + n) * C + c) * oh * ow;
        for (int64_t i = 0; i < oh; ++i) {
          const acc_t* upper = lerped.data() + rt.i0[i] * ow;
          const acc_t* lower = lerped.data() + rt.i1[i] * ow;
          const acc_t a = rt.w0[i], bw = rt.w1[i];
          scalar_t* orow = out + i * ow;
          for (int64_t j = 0; j < ow; ++j) orow[j] = static_cast<scalar_t>(blend<acc_t>(upper[j], lower[j], a, bw));
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& g, const std::vector<Box>& boxes, bool per_sample,
                     at::Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), oh = g.size(3), ow = g.size(4);
  const int64_t H = gx.size(2), W = gx.size(3);
  const int64_t n_tables = static_cast<int64_t>(boxes.size());

  std::vector<AxisReaders<acc_t>> rows(n_tables), cols(n_tables);
  int64_t max_w = 1;
  for (int64_t k = 0; k < n_tables; ++k) {
    rows[k].build(boxes[k].h, oh);
    cols[k].build(boxes[k].w, ow);
    max_w = std::max(max_w, boxes[k].w);
  }

  const scalar_t* gp = g.data_ptr<scalar_t>();
  scalar_t* gxp = gx.data_ptr<scalar_t>();
  at::parallel_for(0, B * C, plane_grain(H * W + N * oh * ow), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(H * W);
    std::vector<acc_t> col_adj(oh * max_w);  // [i][kk]: horizontal adjoint of output row i
    std::vector<acc_t> contrib(max_w);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / C, c = p % C;
      std::fill(total.begin(), total.end(), acc_t(0));
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = per_sample ? b * N + n : n;
        const Box& bx = boxes[k];
        const AxisReaders<acc_t>& rr = rows[k];
        const AxisReaders<acc_t>& cr = cols[k];
        const scalar_t* gplane = gp + ((b * N + n) * C + c) * oh * ow;
        for (int64_t i = 0; i < oh; ++i) {
          const scalar_t* grow = gplane + i * ow;
          acc_t* dst = col_adj.data() + i * bx.w;
          for (int64_t kk = 0; kk < bx.w; ++kk) {
            acc_t sum = acc_t(0);
            for (int32_t e = cr.start[kk]; e < cr.start[kk + 1]; ++e)
              sum += cr.weight[e] * static_cast<acc_t>(grow[cr.index[e]]);
            dst[kk] = sum;
          }
        }
        for (int64_t r = 0; r < bx.h; ++r) {
          std::fill(contrib.begin(), contrib.begin() + bx.w, acc_t(0));
          for (int32_t e = rr.start[r]; e < rr.start[r + 1]; ++e) {
            const acc_t wt = rr.weight[e];
            const acc_t* src = col_adj.data() + rr.index[e] * bx.w;
            for (int64_t kk = 0; kk < bx.w; ++kk) contrib[kk] += wt * src[kk];
          }
          acc_t* dst = total.data() + (bx.t + r) * W + bx.l;
          for (int64_t kk = 0; kk < bx.w; ++kk) dst[kk] += contrib[kk];
        }
      }
      scalar_t* out = gxp + p * H * W;
      for (int64_t e = 0; e < H * W; ++e) out[e] = static_cast<scalar_t>(total[e]);
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
