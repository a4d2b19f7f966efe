// Element types and methods: names and sizes.
#include <array>
#include <cerrno>
#include <cstring>

#include "codec/codec.h"

namespace zipnn {
namespace {

struct DTypeRow {
  DType type;
  std::string_view name;         // ours, as `zipnn info` prints it
  std::string_view safetensors;  // the safetensors header's spelling
  size_t size;
};

constexpr std::array<DTypeRow, kNumDTypes> kDTypes = {{
    {DType::kBytes, "bytes", "", 1},
    {DType::kBF16, "BF16", "BF16", 2},
    {DType::kF16, "F16", "F16", 2},
    {DType::kF32, "F32", "F32", 4},
    {DType::kF64, "F64", "F64", 8},
    {DType::kF8E4M3, "F8_E4M3", "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", "F8_E5M2", 1},
    {DType::kI8, "I8", "I8", 1},
    {DType::kI16, "I16", "I16", 2},
    {DType::kI32, "I32", "I32", 4},
    {DType::kI64, "I64", "I64", 8},
    {DType::kU8, "U8", "U8", 1},
    {DType::kU16, "U16", "U16", 2},
    {DType::kU32, "U32", "U32", 4},
    {DType::kU64, "U64", "U64", 8},
    {DType::kBool, "BOOL", "BOOL", 1},
    {DType::kQ4_0, "Q4_0", "", 18},
    {DType::kQ4_1, "Q4_1", "", 20},
    {DType::kQ5_0, "Q5_0", "", 22},
    {DType::kQ5_1, "Q5_1", "", 24},
    {DType::kQ8_0, "Q8_0", "", 34},
    {DType::kQ2_K, "Q2_K", "", 84},
    {DType::kQ3_K, "Q3_K", "", 110},
    {DType::kQ4_K, "Q4_K", "", 144},
    {DType::kQ5_K, "Q5_K", "", 176},
    {DType::kQ6_K, "Q6_K", "", 210},
}};

}  // namespace

std::string_view DTypeName(DType t) {
  const auto i = static_cast<size_t>(t);
  return i < kDTypes.size() ? kDTypes[i].name : "?";
}

size_t DTypeSize(DType t) {
  const auto i = static_cast<size_t>(t);
  return i < kDTypes.size() ? kDTypes[i].size : 1;
}

bool IsFloat(DType t) {
  switch (t) {
    case DType::kBF16:
    case DType::kF16:
    case DType::kF32:
    case DType::kF64:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return true;
    default:
      return false;
  }
}

std::optional<DType> DTypeFromSafetensors(std::string_view s) {
  if (s == "F8_E4M3FN") return DType::kF8E4M3;  // an alias some writers use
  for (const DTypeRow& r : kDTypes)
    if (!r.safetensors.empty() && r.safetensors == s) return r.type;
  return std::nullopt;
}

std::optional<DType> DTypeFromName(std::string_view s) {
  for (const DTypeRow& r : kDTypes)
    if (r.name == s) return r.type;
  return std::nullopt;
}

std::string_view MethodName(Method m) {
  switch (m) {
    case Method::kRaw:
      return "raw";
    case Method::kZero:
      return "zero";
    case Method::kZstd:
      return "zstd";
    case Method::kGrouped:
      return "grouped";
  }
  return "?";
}

Status Status::FromErrno(int err, const std::string& what) {
  std::string msg = what + ": " + std::strerror(err);
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return NoSpace(msg);
    case ENOENT:
      return NotFound(msg);
    case EEXIST:
      return Exists(msg);
    default:
      return Io(msg);
  }
}

std::string Status::ToString() const {
  static constexpr std::string_view kNames[] = {
      "OK",        "invalid argument", "corrupt",  "checksum mismatch", "I/O error",
      "not found", "exists",           "no space", "unsupported",       "busy"};
  const auto i = static_cast<size_t>(code_);
  std::string s(i < std::size(kNames) ? kNames[i] : "error");
  if (!msg_.empty()) s += ": " + msg_;
  return s;
}

}  // namespace zipnn
