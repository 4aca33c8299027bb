// hfcn_bench::crop_resize CUDA kernels: one launch for all B*N crops. The forward gives each
// thread one output element; the backward gives each thread one input element, which sums the
// contributions of every crop that reads it in crop order (a gather: no atomics, so the
// result is bitwise reproducible). Both evaluate the element functions of crop_resize.h, the
// ones the CPU kernels' tables are built from.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "crop_resize.h"
#include "crop_resize_host.h"

namespace hfcn {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  // A grid-stride loop covers the rest; 65535 * 32 blocks keeps every GPU busy.
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(65535) * 32);
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ boxes,
                               scalar_t* __restrict__ y, int64_t total, int64_t N, int64_t C,
                               int64_t H, int64_t W, int64_t oh, int64_t ow, bool per_sample) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % ow;
    const int64_t i = (e / ow) % oh;
    const int64_t c = (e / (ow * oh)) % C;
    const int64_t n = (e / (ow * oh * C)) % N;
    const int64_t b = e / (ow * oh * C * N);
    const int64_t* box = boxes + 4 * (per_sample ? b * N + n : n);
    const scalar_t* plane = x + (b * C + c) * H * W;
    y[e] = static_cast<scalar_t>(
        output_element<scalar_t, acc_t>(plane, W, box[0], box[1], box[2], box[3], oh, ow, i, j));
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ g, const int64_t* __restrict__ boxes,
                                scalar_t* __restrict__ gx, int64_t total, int64_t N, int64_t C,
                                int64_t H, int64_t W, int64_t oh, int64_t ow, bool per_sample) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e % W;
    const int64_t r = (e / W) % H;
    const int64_t c = (e / (W * H)) % C;
    const int64_t b = e / (W * H * C);
    acc_t sum = acc_t(0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t* box = boxes + 4 * (per_sample ? b * N + n : n);
      const int64_t t = box[0], l = box[1], h = box[2], w = box[3];
      if (r < t || r >= t + h || k < l || k >= l + w) continue;
      const scalar_t* gplane = g + ((b * N + n) * C + c) * oh * ow;
      sum += input_grad_element<scalar_t, acc_t>(gplane, r - t, k - l, h, w, oh, ow);
    }
    gx[e] = static_cast<scalar_t>(sum);
  }
}

at::Tensor crop_resize_cuda(const at::Tensor& x_in, const at::Tensor& boxes_in, int64_t out_h,
                            int64_t out_w) {
  check_forward_args(x_in, boxes_in, out_h, out_w);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = boxes.size(-2);
  at::Tensor y = at::empty({B, N, C, out_h, out_w}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_resize_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), boxes.data_ptr<int64_t>(), y.data_ptr<scalar_t>(), total, N, C, H,
        W, out_h, out_w, boxes.dim() == 3);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad_in, const at::Tensor& boxes_in,
                                     int64_t in_h, int64_t in_w) {
  check_backward_args(grad_in, boxes_in, in_h, in_w);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor g = grad_in.contiguous();
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t B = g.size(0), N = g.size(1), C = g.size(2), oh = g.size(3), ow = g.size(4);
  at::Tensor gx = at::empty({B, C, in_h, in_w}, g.options());
  const int64_t total = gx.numel();
  if (total == 0) return gx;
  if (g.numel() == 0) return gx.zero_();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "crop_resize_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), boxes.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), total, N, C,
        in_h, in_w, oh, ow, boxes.dim() == 3);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace
}  // namespace hfcn

TORCH_LIBRARY_IMPL(hfcn_bench, CUDA, m) {
  m.impl("crop_resize", &hfcn::crop_resize_cuda);
  m.impl("crop_resize_backward", &hfcn::crop_resize_backward_cuda);
}
