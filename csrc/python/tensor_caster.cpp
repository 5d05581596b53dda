#include "python/tensor_caster.h"

#include <string>
#include <unordered_map>

#include "python/dlpack.h"

namespace py = pybind11;

namespace replearn::python {

namespace {

DType dtype_from_name(const std::string& name) {
  // torch spells dtypes "torch.float32"; numpy-style names are accepted too.
  static const std::unordered_map<std::string, DType> names = {
      {"float32", DType::Float32}, {"float64", DType::Float64},   {"float16", DType::Float16},
      {"bfloat16", DType::BFloat16}, {"int8", DType::Int8},       {"int16", DType::Int16},
      {"int32", DType::Int32},     {"int64", DType::Int64},       {"uint8", DType::UInt8},
      {"bool", DType::Bool},       {"complex64", DType::Complex64}, {"complex128", DType::Complex128},
  };
  const auto dot = name.rfind('.');
  auto it = names.find(dot == std::string::npos ? name : name.substr(dot + 1));
  return it == names.end() ? DType::Other : it->second;
}

// torch.dtype objects are immortal singletons, so their identity is a safe cache key.
DType dtype_of_object(PyObject* dtype_obj) {
  static std::unordered_map<PyObject*, DType> cache;  // guarded by the GIL
  auto it = cache.find(dtype_obj);
  if (it != cache.end()) return it->second;
  const DType dt = dtype_from_name(py::str(py::handle(dtype_obj)).cast<std::string>());
  cache.emplace(dtype_obj, dt);
  Py_INCREF(dtype_obj);  // keep the key alive for the life of the process
  return dt;
}

DType dtype_from_dlpack(const DLDataType& t) {
  if (t.lanes != 1) return DType::Other;
  switch (t.code) {
    case kDLFloat:
      return t.bits == 32 ? DType::Float32 : t.bits == 64 ? DType::Float64 : t.bits == 16 ? DType::Float16 : DType::Other;
    case kDLBfloat: return t.bits == 16 ? DType::BFloat16 : DType::Other;
    case kDLInt:
      return t.bits == 8 ? DType::Int8 : t.bits == 16 ? DType::Int16 : t.bits == 32 ? DType::Int32
             : t.bits == 64 ? DType::Int64 : DType::Other;
    case kDLUInt: return t.bits == 8 ? DType::UInt8 : DType::Other;
    case kDLBool: return DType::Bool;
    case kDLComplex: return t.bits == 64 ? DType::Complex64 : t.bits == 128 ? DType::Complex128 : DType::Other;
    default: return DType::Other;
  }
}

// The strides of a row-major (C-contiguous) tensor of view's sizes.
void set_row_major_strides(TensorView& view) {
  int64_t stride = 1;
  for (int d = view.ndim - 1; d >= 0; --d) {
    view.strides[d] = stride;
    stride *= view.sizes[d];
  }
}

// Sizes and strides from tuples of ints; without `strides`, row-major ones (torch's is_contiguous()
// said so: size-1 dimensions, whose strides torch leaves arbitrary, get the canonical ones, which
// address the same elements).
void fill_sizes(TensorView& view, const py::handle& sizes, const py::handle& strides = py::handle()) {
  const auto ndim = PyTuple_Size(sizes.ptr());
  if (ndim < 0) throw py::error_already_set();
  if (ndim > TensorView::kMaxDims)
    throw Error(ErrorKind::Value, "replearn supports tensors of at most " + std::to_string(TensorView::kMaxDims) +
                                      " dimensions, got " + std::to_string(ndim));
  view.ndim = static_cast<int>(ndim);
  for (int d = 0; d < view.ndim; ++d) {
    view.sizes[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes.ptr(), d));
    if (strides) view.strides[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), d));
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  if (!strides) set_row_major_strides(view);
}

// torch.Tensor and anything shaped like it. Returns false when `obj` lacks the attributes.
// Every read is a Python attribute access of 30–70 ns (torch's getters set up error handling each
// time), so it reads as few as it can: data_ptr() called without a bound-method object, and the
// strides only for tensors that are not contiguous (the common case computes them from the shape).
bool from_torch_like(py::handle obj, TensorView& view) {
  static PyObject* const data_ptr_name = PyUnicode_InternFromString("data_ptr");
  PyObject* raw_ptr = PyObject_CallMethodNoArgs(obj.ptr(), data_ptr_name);
  if (!raw_ptr) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();  // e.g. no storage
    PyErr_Clear();
    return false;
  }
  py::object ptr = py::reinterpret_steal<py::object>(raw_ptr);
  static PyObject* const shape_name = PyUnicode_InternFromString("shape");
  static PyObject* const stride_name = PyUnicode_InternFromString("stride");
  static PyObject* const is_contiguous_name = PyUnicode_InternFromString("is_contiguous");
  static PyObject* const dtype_name_ = PyUnicode_InternFromString("dtype");
  static PyObject* const get_device_name = PyUnicode_InternFromString("get_device");
  static PyObject* const is_cuda_name = PyUnicode_InternFromString("is_cuda");
  static PyObject* const is_cpu_name = PyUnicode_InternFromString("is_cpu");

  auto attr = [&](PyObject* name) {
    PyObject* r = PyObject_GetAttr(obj.ptr(), name);
    if (!r) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  };
  auto call = [&](PyObject* name) {
    PyObject* r = PyObject_CallMethodNoArgs(obj.ptr(), name);
    if (!r) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(r);
  };

  view.data = reinterpret_cast<void*>(static_cast<std::uintptr_t>(PyLong_AsUnsignedLongLong(ptr.ptr())));
  if (PyErr_Occurred()) throw py::error_already_set();
  py::object shape = attr(shape_name);
  if (!PyTuple_Check(shape.ptr())) return false;
  const int contiguous = PyObject_IsTrue(call(is_contiguous_name).ptr());
  if (contiguous < 0) throw py::error_already_set();
  if (contiguous) {
    fill_sizes(view, shape);
  } else {
    py::object strides = call(stride_name);
    if (!PyTuple_Check(strides.ptr())) return false;
    fill_sizes(view, shape, strides);
  }
  view.dtype = dtype_of_object(attr(dtype_name_).ptr());

  if (PyObject_IsTrue(attr(is_cpu_name).ptr()) == 1) {  // the common case first: one attribute read
    view.device = {DeviceType::CPU, 0};
  } else if (PyObject_IsTrue(attr(is_cuda_name).ptr()) == 1) {
    view.device = {DeviceType::CUDA, static_cast<int>(PyLong_AsLong(call(get_device_name).ptr()))};
  } else {
    view.device = {DeviceType::Other, 0};  // meta, mps, xpu, ...: validation names it
  }
  return true;
}

// Copies a DLTensor's description into `view` (sizes and strides by value: the producer's arrays
// need not outlive the call). Contiguous tensors get row-major strides, as on the attribute path:
// torch leaves the strides of size-1 dimensions arbitrary.
void describe_dltensor(const DLTensor& t, TensorView& view) {
  if (t.ndim > TensorView::kMaxDims)
    throw Error(ErrorKind::Value, "replearn supports tensors of at most " + std::to_string(TensorView::kMaxDims) +
                                      " dimensions, got " + std::to_string(t.ndim));
  view.data = static_cast<char*>(t.data) + t.byte_offset;
  view.dtype = dtype_from_dlpack(t.dtype);
  switch (t.device.device_type) {
    case kDLCPU: case kDLCUDAHost: view.device = {DeviceType::CPU, 0}; break;
    case kDLCUDA: case kDLCUDAManaged: view.device = {DeviceType::CUDA, t.device.device_id}; break;
    default: view.device = {DeviceType::Other, 0};
  }
  view.ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) {
    view.sizes[d] = t.shape[d];
    if (t.strides) view.strides[d] = t.strides[d];
  }
  if (!t.strides || view.is_contiguous()) set_row_major_strides(view);  // NULL strides: row-major
}

bool from_dlpack_capsule(py::handle capsule, TensorView& view) {
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (!managed) {
    PyErr_Clear();
    throw py::value_error("replearn: this DLPack capsule was already consumed (its name is not 'dltensor')");
  }
  describe_dltensor(managed->dl_tensor, view);
  return true;
}

bool exchange_enabled = true;  // set_tensor_exchange(False) forces the attribute path (tests)

// The DLPack C exchange function of `type` (torch publishes one on torch.Tensor since 2.10,
// pytorch/pytorch#169724), or nullptr.
// Looked up once per type and kept in a small cache of strong references, so a cached type is never
// freed and its address never reused. Types without the table are not cached (numpy arrays, wrong
// arguments: they pay the failed lookup); types beyond the cache's capacity take the attribute path.
DLPackDLTensorFromPyObjectNoSync exchange_function(PyTypeObject* type) {
  struct Entry {
    PyTypeObject* type;
    DLPackDLTensorFromPyObjectNoSync function;
  };
  static Entry cache[8];  // guarded by the GIL
  static int cached = 0;
  for (int i = 0; i < cached; ++i)
    if (cache[i].type == type) return cache[i].function;
  if (cached == 8) return nullptr;
  static PyObject* const api_name = PyUnicode_InternFromString("__dlpack_c_exchange_api__");
  PyObject* capsule = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), api_name);
  DLPackDLTensorFromPyObjectNoSync function = nullptr;
  if (capsule) {
    const auto* api = static_cast<const DLPackExchangeAPI*>(PyCapsule_GetPointer(capsule, "dlpack_exchange_api"));
    // The table outlives the process's use of it (the specification's promise), not only the capsule.
    if (api && api->header.version.major == 1 && api->header.version.minor >= 3)
      function = api->dltensor_from_py_object_no_sync;
    Py_DECREF(capsule);
  }
  PyErr_Clear();
  if (!function) return nullptr;
  Py_INCREF(type);
  cache[cached++] = {type, function};
  return function;
}

// torch tensors through the C exchange table: one C call, no Python attribute read. False when the
// producer cannot describe the tensor (meta, sparse, a tensor without storage): the attribute path
// then reports it as it always has.
bool from_exchange(py::handle obj, DLPackDLTensorFromPyObjectNoSync function, TensorView& view) {
  DLTensor t;
  if (function(obj.ptr(), &t) != 0) {
    PyErr_Clear();
    return false;
  }
  describe_dltensor(t, view);
  return true;
}

// Whether torch's negative bit is set on `obj` (torch._neg_view, a contiguous .conj().imag): its
// memory then holds the negated values. Neither the exchange table nor the attributes above say so
// (only __dlpack__ refuses such tensors), so it is asked: is_neg() through the C API, ~0.9k
// instructions per tensor (torch's method sets up its warning handler on every call; callgrind,
// bench/instructions.py). Objects without is_neg (torch-like objects) have no such bit.
bool negative_bit(py::handle obj) {
  static PyObject* const is_neg_name = PyUnicode_InternFromString("is_neg");
  PyObject* result = PyObject_CallMethodNoArgs(obj.ptr(), is_neg_name);
  if (!result) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
    PyErr_Clear();
    return false;
  }
  const bool negated = result == Py_True;
  Py_DECREF(result);
  return negated;
}

}  // namespace

bool to_tensor_view(py::handle obj, TensorView& view, py::object& keep_alive) {
  if (PyCapsule_CheckExact(obj.ptr())) {
    keep_alive = py::reinterpret_borrow<py::object>(obj);
    return from_dlpack_capsule(obj, view);
  }
  const auto exchange = exchange_enabled ? exchange_function(Py_TYPE(obj.ptr())) : nullptr;
  if ((exchange && from_exchange(obj, exchange, view)) || from_torch_like(obj, view)) {
    view.negated = negative_bit(obj);
    return true;
  }
  if (!py::hasattr(obj, "__dlpack__")) return false;
  // The capsule stays unconsumed: its destructor returns the memory to the producer when the
  // caster (and so keep_alive) goes away after the call.
  keep_alive = obj.attr("__dlpack__")();
  return from_dlpack_capsule(keep_alive, view);
}

bool uses_tensor_exchange(py::handle obj) {
  return exchange_enabled && exchange_function(Py_TYPE(obj.ptr())) != nullptr;
}

bool set_tensor_exchange(bool enabled) {
  const bool previous = exchange_enabled;
  exchange_enabled = enabled;
  return previous;
}

void register_error_translator() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); return;
        case ErrorKind::Value: PyErr_SetString(PyExc_ValueError, e.what()); return;
        case ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, e.what()); return;
      }
    }
  });
}

}  // namespace replearn::python
