// Argument validation for the recurrent family, shared by the CPU and CUDA entry points.
#include "core/check.h"
#include "rnn/rnn.h"

namespace replearn::rnn {

namespace {

const char* const kCellNames = "0 (tanh), 1 (relu), 2 (lstm) or 3 (gru)";

Cell cell_of(const Checker& check, int cell) {
  check.value(cell >= 0 && cell <= 3, "cell", kCellNames, cell);
  return static_cast<Cell>(cell);
}

// A tensor of x's dtype and device with exactly `sizes`, contiguous.
void check_like_x(Checker& check, const char* arg, const TensorView& t, const TensorView& x,
                  std::initializer_list<int64_t> sizes) {
  check.floating(arg, t);
  check.same_dtype(arg, t, "x", x);
  check.shape(arg, t, sizes);
  check.contiguous(arg, t);
}

// The reserve (T, B, width) in the accumulation dtype of x (stats_dtype: float32 for float16/bfloat16).
void check_reserve(Checker& check, const TensorView& reserve, const TensorView& x, const LayerDims& d) {
  check.floating("reserve", reserve);
  check.dtype("reserve", reserve, stats_dtype(x.dtype));
  check.shape("reserve", reserve, {d.steps, d.batch, d.reserve()});
  check.contiguous("reserve", reserve);
}

void check_optional_like_x(Checker& check, const char* arg, const OptView& t, const TensorView& x,
                           std::initializer_list<int64_t> sizes) {
  if (t) check_like_x(check, arg, *t, x, sizes);
}

// The LSTM's cell state is required exactly for the LSTM.
void check_cell_state(Checker& check, const char* arg, const OptView& t, const LayerDims& d, const TensorView& x,
                      bool required) {
  if (d.cell == Cell::Lstm && required) {
    REPLEARN_CHECK(t.has_value(), Value, check.function(), ": argument '", arg, "' expected a (", d.batch, ", ",
                   d.hidden, ") tensor for the LSTM but got none");
  } else if (d.cell != Cell::Lstm) {
    REPLEARN_CHECK(!t.has_value(), Value, check.function(), ": argument '", arg,
                   "' expected none (only the LSTM has a cell state) but got a tensor");
  }
  check_optional_like_x(check, arg, t, x, {d.batch, d.hidden});
}

// x (T, B, I) and the weights give the geometry: H from W_hh (G·H, H), or with a projection W_hr (P, H)
// from W_hr, and then W_hh must be (4H, P).
LayerDims layer_dims(Checker& check, int cell, const TensorView& x, const TensorView& w_ih, const TensorView& w_hh,
                     const OptView& w_hr) {
  LayerDims d{cell_of(check, cell), 0, 0, 0, 0};
  check.floating("x", x);
  REPLEARN_CHECK(x.ndim == 3, Value, check.function(), ": argument 'x' expected 3 dimensions (T, B, I) but got shape ",
                 x.shape_string());
  check.contiguous("x", x);
  d.steps = x.size(0);
  d.batch = x.size(1);
  d.input = x.size(2);
  // As torch: a batch of no sequences is fine (every output empty, zero parameter gradients).
  check.value(d.steps >= 1 && d.batch >= 0, "x", "at least one step", x.shape_string());
  check.floating("w_hh", w_hh);
  check.same_dtype("w_hh", w_hh, "x", x);
  if (w_hr) {
    REPLEARN_CHECK(d.cell == Cell::Lstm, Value, check.function(),
                   ": argument 'w_hr' expected none (only the LSTM has a projection) but got a tensor");
    check.floating("w_hr", *w_hr);
    check.same_dtype("w_hr", *w_hr, "x", x);
    REPLEARN_CHECK(w_hr->ndim == 2 && w_hr->size(0) >= 1 && w_hr->size(1) >= 1, Value, check.function(),
                   ": argument 'w_hr' expected shape (proj, hidden) with both at least 1 but got ",
                   w_hr->shape_string());
    check.contiguous("w_hr", *w_hr);
    d.hidden = w_hr->size(1);
    d.proj = w_hr->size(0);
    REPLEARN_CHECK(w_hh.ndim == 2 && w_hh.size(0) == 4 * d.hidden && w_hh.size(1) == d.proj, Value, check.function(),
                   ": argument 'w_hh' expected shape (", 4 * d.hidden, ", ", d.proj,
                   ") (4·hidden, proj) as w_hr is (proj, hidden) but got ", w_hh.shape_string());
  } else {
    REPLEARN_CHECK(w_hh.ndim == 2 && w_hh.size(1) >= 1 && w_hh.size(0) == gate_count(d.cell) * w_hh.size(1), Value,
                   check.function(), ": argument 'w_hh' expected shape (", gate_count(d.cell),
                   "·hidden, hidden) but got ", w_hh.shape_string());
    d.hidden = w_hh.size(1);
  }
  check.contiguous("w_hh", w_hh);
  check_like_x(check, "w_ih", w_ih, x, {d.gates(), d.input});
  return d;
}

void check_lengths(Checker& check, const OptView& lengths, const LayerDims& d) {
  if (!lengths) return;
  check.buffer("lengths", *lengths, DType::Int64, d.batch);
  if (lengths->device.type != DeviceType::CPU) return;  // CUDA: clamped in the kernels (rnn.h)
  const int64_t* len = lengths->data_as<const int64_t>();
  for (int64_t b = 0; b < d.batch; ++b) {
    REPLEARN_CHECK(len[b] >= 1 && len[b] <= d.steps, Value, check.function(),
                   ": argument 'lengths' expected values in [1, ", d.steps, "] but got ", len[b], " at index ", b);
  }
}

}  // namespace

int64_t forward_workspace_bytes(const LayerDims& d, DType dtype, DeviceType device) {
  const int64_t element_size = dtype_size(stats_dtype(dtype));
  // cpu.cpp: W_hh regrouped by chunk, and its packed panels
  const int64_t packed_w_hh =
      device == DeviceType::CPU ? d.gates() * d.state() + cpu_panel_elements(d, element_size, false) : 0;
  const int64_t cuda_states = device == DeviceType::CUDA ? d.batch * d.state() + d.batch * d.hidden : 0;
  const int64_t float_y = device == DeviceType::CUDA && dtype != stats_dtype(dtype) ? d.steps * d.batch * d.state() : 0;
  return (d.batch * d.gates() + d.gates() + d.hidden + d.batch * d.state() + packed_w_hh + cuda_states + float_y) *
         element_size;
}

int64_t backward_workspace_bytes(const LayerDims& d, DType dtype, DeviceType device) {
  const int64_t element_size = dtype_size(stats_dtype(dtype));
  const int64_t gate_grads = d.steps * d.batch * d.gates() * (d.cell == Cell::Gru ? 2 : 1);
  const int64_t projection = d.proj > 0 ? d.steps * d.batch * d.proj + d.batch * d.hidden : 0;
  const int64_t panels = device == DeviceType::CPU ? cpu_panel_elements(d, element_size, true) : 0;
  const int64_t float_grad_y =
      device == DeviceType::CUDA && dtype != stats_dtype(dtype) ? d.steps * d.batch * d.state() : 0;
  return (gate_grads + 2 * d.batch * d.state() + d.batch * d.hidden + projection + panels + float_grad_y) *
         element_size;
}

LayerDims check_forward(DeviceType device, int cell, const TensorView& x, const TensorView& h0, const OptView& c0,
                        const TensorView& w_ih, const TensorView& w_hh, const OptView& w_hr, const OptView& b_ih,
                        const OptView& b_hh, const OptView& lengths, const TensorView& y, const TensorView& h_n,
                        const OptView& c_n, const TensorView& reserve, const OptView& workspace) {
  Checker check("rnn_forward", device);
  const LayerDims d = layer_dims(check, cell, x, w_ih, w_hh, w_hr);
  check_like_x(check, "h0", h0, x, {d.batch, d.state()});
  check_cell_state(check, "c0", c0, d, x, true);
  check_optional_like_x(check, "b_ih", b_ih, x, {d.gates()});
  check_optional_like_x(check, "b_hh", b_hh, x, {d.gates()});
  check_lengths(check, lengths, d);
  check_like_x(check, "y", y, x, {d.steps, d.batch, d.state()});
  check_like_x(check, "h_n", h_n, x, {d.batch, d.state()});
  check_cell_state(check, "c_n", c_n, d, x, true);
  check_reserve(check, reserve, x, d);
  check.workspace(workspace, forward_workspace_bytes(d, x.dtype, device), "x", x);
  return d;
}

LayerDims check_backward(DeviceType device, int cell, const TensorView& grad_y, const TensorView& grad_h_n,
                         const OptView& grad_c_n, const TensorView& x, const TensorView& w_ih, const TensorView& w_hh,
                         const OptView& w_hr, const OptView& lengths, const TensorView& reserve,
                         const OptView& grad_x, const OptView& grad_h0, const OptView& grad_c0,
                         const OptView& grad_w_ih, const OptView& grad_w_hh, const OptView& grad_w_hr,
                         const OptView& grad_b_ih, const OptView& grad_b_hh, const OptView& workspace) {
  Checker check("rnn_backward", device);
  const LayerDims d = layer_dims(check, cell, x, w_ih, w_hh, w_hr);
  check_like_x(check, "grad_y", grad_y, x, {d.steps, d.batch, d.state()});
  check_like_x(check, "grad_h_n", grad_h_n, x, {d.batch, d.state()});
  check_cell_state(check, "grad_c_n", grad_c_n, d, x, true);
  check_lengths(check, lengths, d);
  check_reserve(check, reserve, x, d);
  check_optional_like_x(check, "grad_x", grad_x, x, {d.steps, d.batch, d.input});
  check_optional_like_x(check, "grad_h0", grad_h0, x, {d.batch, d.state()});
  check_cell_state(check, "grad_c0", grad_c0, d, x, false);
  check_optional_like_x(check, "grad_w_ih", grad_w_ih, x, {d.gates(), d.input});
  check_optional_like_x(check, "grad_w_hh", grad_w_hh, x, {d.gates(), d.state()});
  if (grad_w_hr) {
    REPLEARN_CHECK(w_hr.has_value(), Value, check.function(),
                   ": argument 'grad_w_hr' expected none (no projection w_hr was given) but got a tensor");
    check_like_x(check, "grad_w_hr", *grad_w_hr, x, {d.proj, d.hidden});
  }
  check_optional_like_x(check, "grad_b_ih", grad_b_ih, x, {d.gates()});
  check_optional_like_x(check, "grad_b_hh", grad_b_hh, x, {d.gates()});
  check.workspace(workspace, backward_workspace_bytes(d, x.dtype, device), "x", x);
  return d;
}

LayerDims workspace_query_dims(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr) {
  REPLEARN_CHECK(cell >= 0 && cell <= 3, Value, "rnn workspace size: argument 'cell' expected ", kCellNames,
                 " but got ", cell);
  REPLEARN_CHECK(x.ndim == 3, Value, "rnn workspace size: argument 'x' expected 3 dimensions (T, B, I) but got shape ",
                 x.shape_string());
  REPLEARN_CHECK(w_hh.ndim == 2, Value,
                 "rnn workspace size: argument 'w_hh' expected 2 dimensions (G·H, H) but got shape ",
                 w_hh.shape_string());
  if (!w_hr) return {static_cast<Cell>(cell), x.size(0), x.size(1), x.size(2), w_hh.size(1)};
  REPLEARN_CHECK(w_hr->ndim == 2, Value,
                 "rnn workspace size: argument 'w_hr' expected 2 dimensions (P, H) but got shape ",
                 w_hr->shape_string());
  return {static_cast<Cell>(cell), x.size(0), x.size(1), x.size(2), w_hr->size(1), w_hr->size(0)};
}

template <DeviceType D>
int64_t rnn_forward_workspace_size(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr) {
  return forward_workspace_bytes(workspace_query_dims(cell, x, w_hh, w_hr), x.dtype, D);
}

template <DeviceType D>
int64_t rnn_backward_workspace_size(int cell, const TensorView& x, const TensorView& w_hh, const OptView& w_hr) {
  return backward_workspace_bytes(workspace_query_dims(cell, x, w_hh, w_hr), x.dtype, D);
}

// The CUDA kernels use the CPU layout (float32), less the CPU's regrouped copy of W_hh.
template int64_t rnn_forward_workspace_size<DeviceType::CPU>(int, const TensorView&, const TensorView&,
                                                                   const OptView&);
template int64_t rnn_forward_workspace_size<DeviceType::CUDA>(int, const TensorView&, const TensorView&,
                                                                   const OptView&);
template int64_t rnn_backward_workspace_size<DeviceType::CPU>(int, const TensorView&, const TensorView&,
                                                                   const OptView&);
template int64_t rnn_backward_workspace_size<DeviceType::CUDA>(int, const TensorView&, const TensorView&,
                                                                   const OptView&);

}  // namespace replearn::rnn
