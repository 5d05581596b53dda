#include "python/route.h"

namespace py = pybind11;

namespace replearn::python {

namespace {

enum Route : long { kRouteKernel = 0, kRouteFunction = 1, kRouteDispatcher = 2 };

// Set once by configure_route; owned references, kept for the life of the process.
PyObject* tensor_type = nullptr;
PyObject* parameter_type = nullptr;

// 1 when attribute `name` of `obj` is true, 0 when false, -1 with a Python error set.
int attribute_is_true(PyObject* obj, PyObject* name) {
  PyObject* value = PyObject_GetAttr(obj, name);
  if (!value) return -1;
  const int truth = PyObject_IsTrue(value);
  Py_DECREF(value);
  return truth;
}

PyObject* route(PyObject*, PyObject* const* argv, Py_ssize_t argc) {
  static PyObject* const is_cpu = PyUnicode_InternFromString("is_cpu");
  static PyObject* const is_cuda = PyUnicode_InternFromString("is_cuda");
  static PyObject* const requires_grad = PyUnicode_InternFromString("requires_grad");
  if (argc != 3 || !PyTuple_Check(argv[0]) || !PyTuple_Check(argv[1])) {
    PyErr_SetString(PyExc_TypeError, "route(args: tuple, tensor_positions: tuple, grad_enabled: bool)");
    return nullptr;
  }
  if (!tensor_type) {
    PyErr_SetString(PyExc_RuntimeError, "route: configure_route was not called");
    return nullptr;
  }
  PyObject* args = argv[0];
  PyObject* positions = argv[1];
  const int grad = PyObject_IsTrue(argv[2]);
  if (grad < 0) return nullptr;
  bool needs_grad = false, device_read = false;
  const Py_ssize_t nargs = PyTuple_GET_SIZE(args);
  for (Py_ssize_t p = 0; p < PyTuple_GET_SIZE(positions); ++p) {
    Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, p));
    if (i == -1 && PyErr_Occurred()) return nullptr;
    const bool optional = i < 0;  // Tensor? positions come as ~i
    if (optional) i = ~i;
    if (i >= nargs) return PyLong_FromLong(kRouteDispatcher);  // a call short of arguments: the dispatcher's error
    PyObject* a = PyTuple_GET_ITEM(args, i);
    if (a == Py_None) {
      if (optional) continue;
      return PyLong_FromLong(kRouteDispatcher);  // None for a Tensor: NativeOp names the argument
    }
    PyObject* kind = reinterpret_cast<PyObject*>(Py_TYPE(a));
    if (kind != tensor_type && kind != parameter_type) return PyLong_FromLong(kRouteDispatcher);
    if (!device_read) {
      // The first tensor decides: on meta, mps, ... the dispatcher runs the fake implementation or
      // torch's kernels. The others need no read here: every kernel's validation checks that they
      // share its device, and names the one that does not.
      int on_device = attribute_is_true(a, is_cpu);
      if (on_device == 0) on_device = attribute_is_true(a, is_cuda);
      if (on_device < 0) return nullptr;
      if (on_device == 0) return PyLong_FromLong(kRouteDispatcher);
      device_read = true;
    }
    if (!grad || needs_grad) continue;  // one tensor that needs a gradient settles it; types still matter
    const int needs = attribute_is_true(a, requires_grad);
    if (needs < 0) return nullptr;
    needs_grad = needs == 1;
  }
  return PyLong_FromLong(needs_grad ? kRouteFunction : kRouteKernel);
}

PyMethodDef route_def = {"route", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&route)),
                         METH_FASTCALL,
                         "route(args, tensor_positions, grad_enabled) -> 0 kernel, 1 autograd.Function, "
                         "2 torch's dispatcher"};

}  // namespace

void bind_route(py::module_& m) {
  m.def(
      "configure_route",
      [](py::object tensor, py::object parameter) {
        Py_XDECREF(tensor_type);
        Py_XDECREF(parameter_type);
        tensor_type = tensor.release().ptr();
        parameter_type = parameter.release().ptr();
      },
      py::arg("tensor_type"), py::arg("parameter_type"));
  PyObject* function = PyCFunction_NewEx(&route_def, nullptr, m.ptr());
  if (!function) throw py::error_already_set();
  m.add_object("route", py::reinterpret_steal<py::object>(function));
  m.attr("ROUTE_KERNEL") = static_cast<long>(kRouteKernel);
  m.attr("ROUTE_FUNCTION") = static_cast<long>(kRouteFunction);
  m.attr("ROUTE_DISPATCHER") = static_cast<long>(kRouteDispatcher);
}

}  // namespace replearn::python
