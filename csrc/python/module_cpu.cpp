// replearn._C: the CPU kernels.
#include <pybind11/pybind11.h>

#include "core/memory.h"
#include "core/parallel.h"
#include "python/bind_attention.h"
#include "python/bind_conv.h"
#include "python/bind_flow.h"
#include "python/bind_gemm.h"
#include "python/bind_norm.h"
#include "python/bind_pool.h"
#include "python/bind_optim.h"
#include "python/bind_ssm.h"
#include "python/bind_rnn.h"
#include "python/route.h"
#include "python/tensor_caster.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "replearn native CPU kernels (torch-free core, bound with pybind11)";
  replearn::python::register_error_translator();

  m.def("set_num_threads", &replearn::set_num_threads, py::arg("n"),
        "Threads used by CPU kernels (the op layer keeps it equal to torch.get_num_threads()).");
  m.def("num_threads", &replearn::num_threads);
  m.def("last_level_cache_bytes", &replearn::last_level_cache_bytes,
        "The last-level cache size the CPU kernels assume; outputs at least this large are written with "
        "streaming stores (csrc/core/memory.h).");
  m.def("describe", [](const replearn::TensorView& t) {
    // What the bindings see of a tensor: used by the DLPack tests and for debugging.
    py::list sizes, strides;
    for (int d = 0; d < t.ndim; ++d) {
      sizes.append(t.sizes[d]);
      strides.append(t.strides[d]);
    }
    return py::dict(py::arg("data_ptr") = reinterpret_cast<std::uintptr_t>(t.data),
                    py::arg("dtype") = replearn::dtype_name(t.dtype),
                    py::arg("device") = replearn::device_name(t.device), py::arg("shape") = py::tuple(sizes),
                    py::arg("strides") = py::tuple(strides), py::arg("negated") = t.negated);
  }, py::arg("tensor"));
  m.def("uses_tensor_exchange", &replearn::python::uses_tensor_exchange, py::arg("tensor"),
        "Whether tensors of this type are read through DLPack's C exchange table.");
  m.def("set_tensor_exchange", &replearn::python::set_tensor_exchange, py::arg("enabled"),
        "Turns the C exchange path off or on (tests compare it with the attribute path); returns the previous setting.");
  replearn::python::bind_route(m);
  replearn::python::bind_norm<replearn::DeviceType::CPU>(m);
  replearn::python::bind_pool<replearn::DeviceType::CPU>(m);
  replearn::python::bind_optim<replearn::DeviceType::CPU>(m);
  replearn::python::bind_attention<replearn::DeviceType::CPU>(m);
  replearn::python::bind_ssm<replearn::DeviceType::CPU>(m);
  replearn::python::bind_conv<replearn::DeviceType::CPU>(m);
  replearn::python::bind_gemm(m);
  replearn::python::bind_rnn<replearn::DeviceType::CPU>(m);
  replearn::python::bind_flow<replearn::DeviceType::CPU>(m);
}
