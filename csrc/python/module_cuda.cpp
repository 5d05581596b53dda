// replearn._C_cuda: the CUDA kernels. Linked to the static CUDA runtime, so it imports on machines
// without a GPU; the op layer only calls into it for CUDA tensors.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "python/bind_attention.h"
#include "python/bind_conv.h"
#include "python/bind_flow.h"
#include "python/bind_norm.h"
#include "python/bind_pool.h"
#include "python/bind_optim.h"
#include "python/bind_ssm.h"
#include "python/bind_rnn.h"
#include "python/tensor_caster.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "replearn native CUDA kernels (torch-free core, bound with pybind11)";
  replearn::python::register_error_translator();
  m.def("device_count", []() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });
  replearn::python::bind_norm<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_pool<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_optim<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_attention<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_ssm<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_conv<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_rnn<replearn::DeviceType::CUDA>(m);
  replearn::python::bind_flow<replearn::DeviceType::CUDA>(m);
}
