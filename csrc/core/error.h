// replearn::Error and the one check macro every entry point uses.
//
// Messages name the function, the argument, what was expected and what came, e.g.
//   layer_norm_forward: argument 'weight' expected shape (64) but got (32)
// The kind decides the Python exception the bindings raise: Type -> TypeError (wrong dtype or a
// non-tensor), Value -> ValueError (shapes, devices, strides, out-of-range values), Runtime ->
// RuntimeError (a CUDA launch or runtime failure).
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
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
// Messages are built without iostreams. A module whose toolchain links libstdc++ statically (seen on
// a GPU machine's image, g++ 13) shares its locale data with the process's libstdc++ by symbol
// interposition, and its ostream then crashed formatting a double: every error naming a float
// argument (a negative eps) was a segfault. Numbers print as ostream's defaults would (%g, 6 digits).
inline void append(std::string& out, std::string_view text) { out += text; }
inline void append(std::string& out, const char* text) { out += text; }  // else const void* would win
inline void append(std::string& out, char c) { out += c; }
inline void append(std::string& out, const void* pointer) {
  char buffer[32];
  const int n = std::snprintf(buffer, sizeof buffer, "%p", pointer);
  out.append(buffer, n > 0 ? static_cast<size_t>(n) : 0);
}
template <class T, std::enable_if_t<std::is_arithmetic_v<std::decay_t<T>> && !std::is_same_v<std::decay_t<T>, char>, int> = 0>
void append(std::string& out, T value) {
  if constexpr (std::is_same_v<std::decay_t<T>, bool>) {
    out += value ? '1' : '0';
  } else if constexpr (std::is_floating_point_v<std::decay_t<T>>) {
    char buffer[32];
    const int n = std::snprintf(buffer, sizeof buffer, "%g", static_cast<double>(value));
    out.append(buffer, n > 0 ? static_cast<size_t>(n) : 0);
  } else {
    out += std::to_string(value);
  }
}

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::string out;
  (append(out, std::forward<Parts>(parts)), ...);
  return out;
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
