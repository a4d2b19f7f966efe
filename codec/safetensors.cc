// safetensors awareness: parse the header strictly and plan chunks along tensors.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "codec/bytes.h"
#include "codec/codec.h"

namespace zipnn {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

Status Bad(const std::string& why) { return Status::Corrupt("safetensors header: " + why); }

// A safetensors dtype as coded: the type its bytes are grouped as, and its size in bits (the
// sub-byte ones are packed). Newer dtypes than the frame knows are coded as the nearest type of the
// same bit layout: FNUZ floats differ from the FN ones only in bias and NaN, complex64 is pairs of
// F32, E8M0 (exponent-only scales) is a skewed byte, packed F4/F6 are plain bytes.
struct StDType {
  DType coded_as;
  uint32_t bits;
  uint32_t lanes = 1;  // coded elements per tensor element (complex: 2)
};

std::optional<StDType> ParseDType(const std::string& s) {
  if (std::optional<DType> d = DTypeFromSafetensors(s))
    return StDType{*d, static_cast<uint32_t>(8 * DTypeSize(*d))};
  static const std::pair<std::string_view, StDType> kNewer[] = {
      {"F8_E4M3FNUZ", {DType::kF8E4M3, 8}}, {"F8_E5M2FNUZ", {DType::kF8E5M2, 8}},
      {"F8_E8M0", {DType::kU8, 8}},         {"C64", {DType::kF32, 64, 2}},
      {"F4", {DType::kBytes, 4}},           {"F6_E2M3", {DType::kBytes, 6}},
      {"F6_E3M2", {DType::kBytes, 6}},
  };
  for (const auto& [name, d] : kNewer)
    if (name == s) return d;
  return std::nullopt;
}

// Parses one tensor entry; offsets become absolute.
Status ParseTensor(const std::string& name, const nlohmann::json& v, uint64_t data_start,
                   uint64_t data_size, TensorInfo* t) {
  if (!v.is_object()) return Bad(name + ": not an object");
  auto dt = v.find("dtype");
  auto shape = v.find("shape");
  auto offs = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string() || shape == v.end() || !shape->is_array() ||
      offs == v.end() || !offs->is_array() || offs->size() != 2)
    return Bad(name + ": needs dtype, shape and data_offsets");
  std::optional<StDType> d = ParseDType(dt->get<std::string>());
  if (!d) return Bad(name + ": unknown dtype " + dt->get<std::string>());
  t->name = name;
  t->dtype = d->coded_as;
  unsigned __int128 elements = 1;
  for (const auto& dim : *shape) {
    if (!dim.is_number_unsigned()) return Bad(name + ": bad shape");
    t->shape.push_back(dim.get<uint64_t>());
    elements *= t->shape.back();
    // (each dimension too: after a zero one, the product no longer bounds them)
    if (elements > (uint64_t{1} << 62) || t->shape.back() > (uint64_t{1} << 62))
      return Bad(name + ": shape too large");
  }
  if (d->lanes > 1) {  // the shape in coded elements
    if (t->shape.empty()) t->shape.push_back(1);
    t->shape.back() *= d->lanes;
  }
  if (!(*offs)[0].is_number_unsigned() || !(*offs)[1].is_number_unsigned())
    return Bad(name + ": bad data_offsets");
  const uint64_t b = (*offs)[0].get<uint64_t>(), e = (*offs)[1].get<uint64_t>();
  if (b > e || e > data_size) return Bad(name + ": data_offsets out of bounds");
  if (elements * d->bits != static_cast<unsigned __int128>(e - b) * 8)
    return Bad(name + ": size does not match shape");
  t->begin = data_start + b;
  t->end = data_start + e;
  return Status::Ok();
}

}  // namespace

Result<SafetensorsHeader> ParseSafetensorsHeader(const ReadAtFn& read, uint64_t file_size) {
  if (file_size < 8) return Bad("file shorter than 8 bytes");
  uint8_t len_bytes[8];
  ZIPNN_RETURN_IF_ERROR(read(0, len_bytes));
  const uint64_t n = internal::Load64(len_bytes);
  if (n > kMaxSafetensorsHeader) return Bad("larger than 100 MiB");
  if (n < 2 || n > file_size - 8) return Bad("length beyond the end of the file");
  std::string text(n, '\0');
  ZIPNN_RETURN_IF_ERROR(read(8, {reinterpret_cast<uint8_t*>(text.data()), text.size()}));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad("not a JSON object");
  SafetensorsHeader h;
  h.data_start = 8 + n;
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad("__metadata__ is not an object");
      continue;
    }
    TensorInfo t;
    ZIPNN_RETURN_IF_ERROR(ParseTensor(name, v, h.data_start, file_size - h.data_start, &t));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
  });
  const TensorInfo* last = nullptr;  // the non-empty tensor reaching furthest so far
  for (const TensorInfo& t : h.tensors) {
    if (t.begin == t.end) continue;
    if (last && t.begin < last->end)
      return Bad("tensors " + last->name + " and " + t.name + " overlap");
    last = &t;
  }
  return h;
}

namespace {

// A tensor's columns: its last dimension other than 1 (a depthwise kernel [h, w, c, 1] has c),
// 0 for none.
uint64_t Columns(const std::vector<uint64_t>& shape) {
  for (auto d = shape.rbegin(); d != shape.rend(); ++d)
    if (*d != 1) return *d;
  return 0;
}

}  // namespace

void PlanUntyped(uint64_t begin, uint64_t end, uint32_t chunk_size, std::vector<ChunkSpec>& out) {
  for (uint64_t off = begin; off < end; off += chunk_size) {
    ChunkSpec c;
    c.offset = off;
    c.size = static_cast<uint32_t>(std::min<uint64_t>(chunk_size, end - off));
    out.push_back(std::move(c));
  }
}

Result<std::vector<ChunkSpec>> PlanChunks(std::string_view file_name, const ReadAtFn& read,
                                          uint64_t file_size, const PlanOptions& opts) {
  const uint32_t cs = opts.chunk_size;
  if (cs < 4096 || cs > kMaxChunkSize || cs % 8 != 0)
    return Status::InvalidArgument("chunk size must be a multiple of 8 in [4 KiB, 64 MiB]");
  std::vector<ChunkSpec> plan;
  if (!EndsWith(file_name, ".safetensors")) {
    PlanUntyped(0, file_size, cs, plan);
    return plan;
  }
  Result<SafetensorsHeader> h = ParseSafetensorsHeader(read, file_size);
  if (!h.ok()) {
    if (h.status().code() != StatusCode::kCorrupt) return h.status();  // an I/O error
    PlanUntyped(0, file_size, cs, plan);  // not valid safetensors: plain bytes
    return plan;
  }
  PlanUntyped(0, h->data_start, cs, plan);
  uint64_t pos = h->data_start;
  bool open = false;  // the last chunk may still take small tensors
  for (const TensorInfo& t : h->tensors) {
    if (t.begin == t.end) continue;
    if (t.begin > pos) {  // padding between tensors
      PlanUntyped(pos, t.begin, cs, plan);
      open = false;
    }
    if (t.dtype == DType::kBytes) {  // packed sub-byte floats: bytes, never sharing a chunk
      PlanUntyped(t.begin, t.end, cs, plan);
      open = false;
      pos = t.end;
      continue;
    }
    const uint64_t size = t.end - t.begin;
    ChunkSpec* last = open ? &plan.back() : nullptr;
    // Small tensors share a chunk (a segment each); larger ones start their own chunk so a
    // reader of one tensor decodes little else.
    if (last && last->dtype == t.dtype && size < cs / 8 && last->size + size <= cs) {
      last->segments.push_back(last->size / static_cast<uint32_t>(DTypeSize(t.dtype)));
      last->size += static_cast<uint32_t>(size);
    } else {
      for (uint64_t off = t.begin; off < t.end; off += cs) {
        ChunkSpec c;
        c.offset = off;
        c.size = static_cast<uint32_t>(std::min<uint64_t>(cs, t.end - off));
        c.dtype = t.dtype;
        if (t.shape.size() >= 2) c.grid = {(off - t.begin) / DTypeSize(t.dtype), Columns(t.shape)};
        plan.push_back(std::move(c));
      }
    }
    open = true;
    pos = t.end;
  }
  PlanUntyped(pos, file_size, cs, plan);
  return plan;
}

}  // namespace zipnn
