// Status and Result: errors as values across module boundaries (LevelDB style).
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace zipnn {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,  // caller's mistake (bad option, wrong buffer size)
  kCorrupt,          // malformed, truncated or hostile input
  kChecksum,         // decoded bytes do not match their checksum
  kIo,               // an operating-system call failed
  kNotFound,
  kExists,
  kNoSpace,
  kUnsupported,
  kBusy,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status Corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
  static Status ChecksumMismatch(std::string m) { return {StatusCode::kChecksum, std::move(m)}; }
  static Status Io(std::string m) { return {StatusCode::kIo, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Exists(std::string m) { return {StatusCode::kExists, std::move(m)}; }
  static Status NoSpace(std::string m) { return {StatusCode::kNoSpace, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
  static Status Busy(std::string m) { return {StatusCode::kBusy, std::move(m)}; }
  // From errno: ENOSPC/EDQUOT become kNoSpace, ENOENT kNotFound, EEXIST kExists, else kIo.
  static Status FromErrno(int err, const std::string& what);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return msg_; }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string msg_;
};

// A value or an error: the std::expected of C++23, reduced to what the project needs.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) { assert(!std::get<Status>(v_).ok()); }  // NOLINT

  bool ok() const { return v_.index() == 0; }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

// `s` with `context` (a path, a name) in front of its message, "context: message"; ok stays ok.
inline Status WithPath(const std::string& context, const Status& s) {
  if (s.ok()) return s;
  return Status(s.code(), context + ": " + s.message());
}

#define ZIPNN_RETURN_IF_ERROR(expr) \
  do {                              \
    ::zipnn::Status _st = (expr);   \
    if (!_st.ok()) return _st;      \
  } while (0)

}  // namespace zipnn
