#include "python/route.h"

namespace py = pybind11;

namespace replearn::python {

namespace {

enum Route : long { kRouteKernel = 0, kRouteFunction = 1, kRouteDispatcher = 2, kRouteForwardAD = 3 };

// Set once by configure_route; owned references, kept for the life of the process.
PyObject* tensor_type = nullptr;
PyObject* parameter_type = nullptr;
PyObject* dispatcher_conditions = nullptr;  // tuple of callables: any true sends the call to the dispatcher
PyObject* grad_enabled = nullptr;           // torch.is_grad_enabled
PyObject* forward_ad = nullptr;             // torch.autograd.forward_ad: _current_level >= 0 while a level is open

// 1 when calling `fn` returns something true, 0 when false, -1 with a Python error set.
int call_is_true(PyObject* fn) {
  PyObject* value = PyObject_CallNoArgs(fn);
  if (!value) return -1;
  const int truth = PyObject_IsTrue(value);
  Py_DECREF(value);
  return truth;
}

// 1 while a forward-AD level is open, 0 otherwise, -1 with a Python error set. The level is a
// private attribute of torch's: on a version without it, every call counts as under forward AD, so
// NativeOp looks for tangents each time (slower, never wrong).
int forward_ad_active() {
  static PyObject* const current_level = PyUnicode_InternFromString("_current_level");
  PyObject* level = PyObject_GetAttr(forward_ad, current_level);
  if (!level) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
    PyErr_Clear();
    return 1;
  }
  const long value = PyLong_AsLong(level);
  Py_DECREF(level);
  if (value == -1 && PyErr_Occurred()) return -1;
  return value >= 0;
}

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
  if (argc != 2 || !PyTuple_Check(argv[0]) || !PyTuple_Check(argv[1])) {
    PyErr_SetString(PyExc_TypeError, "route(args: tuple, tensor_positions: tuple)");
    return nullptr;
  }
  if (!tensor_type) {
    PyErr_SetString(PyExc_RuntimeError, "route: configure_route was not called");
    return nullptr;
  }
  // The global states first, each a C call to torch (a Python-level check costs several times more).
  const int forward = forward_ad_active();
  if (forward != 0) return forward < 0 ? nullptr : PyLong_FromLong(kRouteForwardAD);
  for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(dispatcher_conditions); ++c) {
    const int on = call_is_true(PyTuple_GET_ITEM(dispatcher_conditions, c));
    if (on != 0) return on < 0 ? nullptr : PyLong_FromLong(kRouteDispatcher);
  }
  PyObject* args = argv[0];
  PyObject* positions = argv[1];
  const int grad = call_is_true(grad_enabled);
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
                         "route(args, tensor_positions) -> 0 kernel, 1 autograd.Function, 2 torch's dispatcher, "
                         "3 forward-mode AD is on"};

void keep(PyObject*& slot, py::object value) {
  Py_XDECREF(slot);
  slot = value.release().ptr();
}

}  // namespace

void bind_route(py::module_& m) {
  m.def(
      "configure_route",
      [](py::object tensor, py::object parameter, py::tuple conditions, py::object is_grad_enabled,
         py::object forward_ad_module) {
        keep(tensor_type, tensor);
        keep(parameter_type, parameter);
        keep(dispatcher_conditions, conditions);
        keep(grad_enabled, is_grad_enabled);
        keep(forward_ad, forward_ad_module);
      },
      py::arg("tensor_type"), py::arg("parameter_type"), py::arg("dispatcher_conditions"), py::arg("grad_enabled"),
      py::arg("forward_ad"));
  // The function's __module__ is the module's name, as for any builtin (torch.compile reads it).
  py::object module_name = m.attr("__name__");
  PyObject* function = PyCFunction_NewEx(&route_def, nullptr, module_name.ptr());
  if (!function) throw py::error_already_set();
  m.add_object("route", py::reinterpret_steal<py::object>(function));
  m.attr("ROUTE_KERNEL") = static_cast<long>(kRouteKernel);
  m.attr("ROUTE_FUNCTION") = static_cast<long>(kRouteFunction);
  m.attr("ROUTE_DISPATCHER") = static_cast<long>(kRouteDispatcher);
  m.attr("ROUTE_FORWARD_AD") = static_cast<long>(kRouteForwardAD);
}

}  // namespace replearn::python
