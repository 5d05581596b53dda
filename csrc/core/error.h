// replearn::Error and the one check macro every entry point uses.
//
// Messages name the function, the argument, what was expected and what came, e.g.
//   layer_norm_forward: argument 'weight' expected shape (64) but got (32)
// The kind decides the Python exception the bindings raise: Type -> TypeError (wrong dtype or a
// non-tensor), Value -> ValueError (shapes, devices, strides, out-of-range values), Runtime ->
// RuntimeError (a CUDA launch or runtime failure).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace replearn {

enum class ErrorKind { Value, Type, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

}  // namespace replearn

// REPLEARN_CHECK(cond, kind, message parts...): throw replearn::Error(kind, concat(parts)) when
// cond is false. kind is Value, Type or Runtime.
#define REPLEARN_CHECK(cond, kind, ...)                                                        \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      throw ::replearn::Error(::replearn::ErrorKind::kind, ::replearn::detail::concat(__VA_ARGS__)); \
    }                                                                                          \
  } while (0)
