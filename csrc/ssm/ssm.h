// State-space family: the C++ API (plain functions over TensorViews).
//
//   selective_scan   Mamba's selective SSM (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
//                    Selective State Spaces", Algorithm 2 and §3.5): per (batch b, channel d), state h ∈ R^N,
//                      Δ_t   = softplus?(δ_t + δ_bias[d])
//                      h_t   = exp(Δ_t·A[d]) ⊙ h_{t−1} + Δ_t·B_t·u_t         (zero-order hold on A, Euler on B)
//                      y_t   = ⟨C_t, h_t⟩ + D[d]·u_t,     out_t = y_t·silu(z_t) when z is given
//                    B_t, C_t are B[d], C[d] (time-invariant, (dim, N)) or B[b, g, :, t] (selective,
//                    (batch, groups, N, L), channel d in group g = d / (dim/groups)).
//   causal_conv1d    depthwise causal convolution (Mamba's short conv, Gu & Dao 2023 §3.4):
//                      y[b, d, t] = act(bias[d] + Σ_k w[d, k]·x̃[b, d, t + k]),  k < W ∈ {2, 3, 4},
//                    x̃ = concat(initial_state (W−1 values, zeros when absent), x) along time.
//   s4d_kernel       the SSM convolution kernel of a diagonal state matrix (S4D, Gu et al. 2022):
//                      K[h, l] = 2·Re Σ_n C̃[h, n]·Ā[h, n]^l,  Ā = exp(Δ_h·A_n) (zero-order hold),
//                      C̃ = C·(Ā − 1)/A·B  (B folded into C, as in the paper),
//                    a Vandermonde product with complex A, C passed as separate real/imaginary tensors.
//   cauchy           the Cauchy kernel of S4's DPLR generating function (Gu et al. 2021, §3.3, Algorithm 1):
//                      out[h, l] = Σ_n v[h, n] / (z[l] − w[h, n])   (complex; nodes z shared by every row)
//
// Conventions shared by every function here:
// - Callers allocate (ARCHITECTURE.md): outputs and workspaces are passed in. Every tensor is contiguous
//   and the floating tensors of one call share one dtype; saved states are stats_dtype() (float64 for
//   float64 inputs, float32 otherwise).
// - selective_scan's forward saves the state at the end of every chunk of kScanChunk steps
//   (checkpoints: (batch, dim, chunks, N)); the last one is the final state. Backward starts each chunk
//   from the previous checkpoint, recomputes the chunk's states, and runs the adjoint recurrence
//   backwards through it, so memory is O(L·N/kScanChunk) per channel instead of O(L·N).
// - Workspaces are UInt8 buffers of at least *_workspace_size() bytes; size 0 means none is needed.
// - Every function validates all of its arguments before it touches memory and throws
//   replearn::Error naming the argument otherwise.
#pragma once

#include <cstdint>
#include <optional>

#include "core/tensor_view.h"

namespace replearn::ssm {

using OptView = std::optional<TensorView>;

// Steps between saved states in selective_scan's forward (the backward's recomputation unit).
constexpr int64_t kScanChunk = 64;
// The CUDA scan keeps a channel's states in registers: at most this many per channel.
constexpr int64_t kCudaMaxStates = 64;

constexpr int64_t scan_chunks(int64_t length) { return (length + kScanChunk - 1) / kScanChunk; }

// Geometry of a selective scan, derived from the argument shapes by validation.
struct ScanDims {
  int64_t batch, dim, length, states, groups;  // groups: of the selective B/C (1 when both are time-invariant)
  bool selective_B, selective_C;
};
// Geometry of a causal conv: x viewed as (batch, dim, length), kernel width.
struct ConvDims {
  int64_t batch, dim, length, width;
};
// Geometry of an S4D kernel: H channels, N (complex, conjugate-paired) states, L kernel length.
struct VandermondeDims {
  int64_t channels, states, length;
};

// Geometry of a Cauchy product: H rows of N poles, L nodes.
struct CauchyDims {
  int64_t rows, poles, nodes;
};

ScanDims check_selective_scan_forward(DeviceType device, const TensorView& u, const TensorView& delta,
                                      const TensorView& A, const TensorView& B, const TensorView& C,
                                      const OptView& D, const OptView& z, const OptView& delta_bias,
                                      const TensorView& out, const OptView& checkpoints);
ScanDims check_selective_scan_backward(DeviceType device, const TensorView& grad_out, const TensorView& u,
                                       const TensorView& delta, const TensorView& A, const TensorView& B,
                                       const TensorView& C, const OptView& D, const OptView& z,
                                       const OptView& delta_bias, const TensorView& checkpoints,
                                       const OptView& grad_last_state, const TensorView& du, const TensorView& ddelta, const TensorView& dA,
                                       const TensorView& dB, const TensorView& dC, const OptView& dD,
                                       const OptView& dz, const OptView& ddelta_bias, const OptView& workspace,
                                       int64_t workspace_bytes);
ConvDims check_causal_conv1d_forward(DeviceType device, const TensorView& x, const TensorView& weight,
                                     const OptView& bias, const OptView& initial_state, const TensorView& y,
                                     const OptView& final_state);
ConvDims check_causal_conv1d_backward(DeviceType device, const TensorView& grad_y, const TensorView& x,
                                      const TensorView& weight, const OptView& bias, const OptView& initial_state,
                                      const OptView& grad_final_state, const TensorView& dx, const TensorView& dweight, const OptView& dbias,
                                      const OptView& dinitial_state, const OptView& workspace,
                                      int64_t workspace_bytes);
VandermondeDims check_s4d_kernel_forward(DeviceType device, const TensorView& log_dt, const TensorView& A_real,
                                         const TensorView& A_imag, const TensorView& C_real,
                                         const TensorView& C_imag, const TensorView& K);
VandermondeDims check_s4d_kernel_backward(DeviceType device, const TensorView& grad_K, const TensorView& log_dt,
                                          const TensorView& A_real, const TensorView& A_imag,
                                          const TensorView& C_real, const TensorView& C_imag,
                                          const TensorView& dlog_dt, const TensorView& dA_real,
                                          const TensorView& dA_imag, const TensorView& dC_real,
                                          const TensorView& dC_imag);
CauchyDims check_cauchy_forward(DeviceType device, const TensorView& v_real, const TensorView& v_imag,
                                const TensorView& z_real, const TensorView& z_imag, const TensorView& w_real,
                                const TensorView& w_imag, const TensorView& out_real, const TensorView& out_imag);
CauchyDims check_cauchy_backward(DeviceType device, const TensorView& grad_real, const TensorView& grad_imag,
                                 const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                                 const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                                 const TensorView& dv_real, const TensorView& dv_imag, const TensorView& dw_real,
                                 const TensorView& dw_imag);

// The entry points. One declaration serves both devices: cpu.cpp defines the DeviceType::CPU
// specializations, cuda.cu the DeviceType::CUDA ones. `stream` is a cudaStream_t as an integer.

// u, delta, z, out: (batch, dim, L); A: (dim, N); B, C: (dim, N) or (batch, groups, N, L);
// D, delta_bias: (dim). checkpoints: (batch, dim, scan_chunks(L), N), stats dtype, optional
// (inference needs only out).
template <DeviceType D>
void selective_scan_forward(const TensorView& u, const TensorView& delta, const TensorView& A, const TensorView& B,
                            const TensorView& C, const OptView& D_skip, const OptView& z,
                            const OptView& delta_bias, bool delta_softplus, const TensorView& out,
                            const OptView& checkpoints, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t selective_scan_backward_workspace_size(const TensorView& u, const TensorView& A, const TensorView& B,
                                               const TensorView& C);
// Gradients of Σ grad_out·out + Σ grad_last_state·h_{L−1}: du, ddelta (like u), dA (like A), dB (like
// B), dC (like C), and dD, dz, ddelta_bias exactly when D, z, delta_bias are given. grad_last_state:
// (batch, dim, N), stats dtype, optional (zero when absent).
template <DeviceType D>
void selective_scan_backward(const TensorView& grad_out, const TensorView& u, const TensorView& delta,
                             const TensorView& A, const TensorView& B, const TensorView& C, const OptView& D_skip,
                             const OptView& z, const OptView& delta_bias, bool delta_softplus,
                             const TensorView& checkpoints, const OptView& grad_last_state, const TensorView& du,
                             const TensorView& ddelta,
                             const TensorView& dA, const TensorView& dB, const TensorView& dC, const OptView& dD,
                             const OptView& dz, const OptView& ddelta_bias, const OptView& workspace,
                             std::uintptr_t stream = 0);

// y[i] = e^{x[i]} for i < n by the selective scan's vector exp (lanes.h), compiled with the CPU kernels'
// flags (AVX-512 where built for it): exposed so that its accuracy is tested where it runs.
void scan_exp(const float* x, float* y, int64_t n);

// x, y: (batch, dim, L); weight: (dim, W), 2 ≤ W ≤ 4; bias: (dim); initial_state, final_state:
// (batch, dim, W−1). activation: 0 none, 1 silu. final_state = the last W−1 values of x̃; backward
// takes its gradient (grad_final_state, optional) along with grad_y.
template <DeviceType D>
void causal_conv1d_forward(const TensorView& x, const TensorView& weight, const OptView& bias,
                           const OptView& initial_state, int activation, const TensorView& y,
                           const OptView& final_state, std::uintptr_t stream = 0);
template <DeviceType D>
int64_t causal_conv1d_backward_workspace_size(const TensorView& x, const TensorView& weight);
template <DeviceType D>
void causal_conv1d_backward(const TensorView& grad_y, const TensorView& x, const TensorView& weight,
                            const OptView& bias, const OptView& initial_state, int activation,
                            const OptView& grad_final_state, const TensorView& dx, const TensorView& dweight, const OptView& dbias,
                            const OptView& dinitial_state, const OptView& workspace, std::uintptr_t stream = 0);

// log_dt: (H); A_real, A_imag, C_real, C_imag: (H, N); K: (H, L).
template <DeviceType D>
void s4d_kernel_forward(const TensorView& log_dt, const TensorView& A_real, const TensorView& A_imag,
                        const TensorView& C_real, const TensorView& C_imag, const TensorView& K,
                        std::uintptr_t stream = 0);
template <DeviceType D>
void s4d_kernel_backward(const TensorView& grad_K, const TensorView& log_dt, const TensorView& A_real,
                         const TensorView& A_imag, const TensorView& C_real, const TensorView& C_imag,
                         const TensorView& dlog_dt, const TensorView& dA_real, const TensorView& dA_imag,
                         const TensorView& dC_real, const TensorView& dC_imag, std::uintptr_t stream = 0);

// v, w: (H, N); z: (L); out: (H, L); complex numbers as (real, imaginary) tensor pairs.
template <DeviceType D>
void cauchy_forward(const TensorView& v_real, const TensorView& v_imag, const TensorView& z_real,
                    const TensorView& z_imag, const TensorView& w_real, const TensorView& w_imag,
                    const TensorView& out_real, const TensorView& out_imag, std::uintptr_t stream = 0);
// Gradients of Σ (grad_real·Re out + grad_imag·Im out) with respect to the real and imaginary parts of v
// and w (the nodes z are constants: roots of unity mapped by the bilinear transform).
template <DeviceType D>
void cauchy_backward(const TensorView& grad_real, const TensorView& grad_imag, const TensorView& v_real,
                     const TensorView& v_imag, const TensorView& z_real, const TensorView& z_imag,
                     const TensorView& w_real, const TensorView& w_imag, const TensorView& dv_real,
                     const TensorView& dv_imag, const TensorView& dw_real, const TensorView& dw_imag,
                     std::uintptr_t stream = 0);

}  // namespace replearn::ssm
