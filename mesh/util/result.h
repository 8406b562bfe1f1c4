// Result<T> and Error: how every function that reads untrusted input (network, disk, database,
// user) reports failure without aborting. Bugs are not errors: they are assertions that throw.
// Thread rule: plain values, no shared state.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace mesh::util {

// One line of text that says what went wrong and, where possible, what to do about it.
struct Error {
  std::string message;
  int code = 0;  // optional classification, e.g. the exit code a CLI should use
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
  Result(Error error) : error_(std::move(error)) {}  // NOLINT

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }

  // Precondition: ok(). Calling these on an error is a bug and throws std::logic_error.
  T& value() & { check(); return *value_; }
  const T& value() const& { check(); return *value_; }
  T&& value() && { check(); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

  // Precondition: !ok().
  const Error& error() const {
    if (ok()) throw std::logic_error("Result::error() on a value");
    return error_;
  }

 private:
  void check() const {
    if (!ok()) throw std::logic_error("Result::value() on an error: " + error_.message);
  }
  std::optional<T> value_;
  Error error_;
};

// Result<void>: success or an Error.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : failed_(true), error_(std::move(error)) {}  // NOLINT
  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    if (!failed_) throw std::logic_error("Status::error() on success");
    return error_;
  }

 private:
  bool failed_ = false;
  Error error_;
};

inline Error err(std::string message, int code = 0) { return Error{std::move(message), code}; }

// Asserts an invariant of the program itself (never of input): throws on violation so the
// actor loop can log it and go on.
#define MESH_ASSERT(cond, what)                                                         \
  do {                                                                                  \
    if (!(cond)) throw std::logic_error(std::string("assertion failed: ") + (what) +    \
                                        " (" #cond ") at " __FILE__ ":" + std::to_string(__LINE__)); \
  } while (0)

}  // namespace mesh::util
