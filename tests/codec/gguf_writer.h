// GgufWriter: GGUF files for tests and fuzz seeds, laid out as llama.cpp writes them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace zipnn::test {

// Writes GGUF files: metadata, tensor infos and data, as llama.cpp lays them out.
struct GgufWriter {
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;  // innermost first, as ggml
    uint32_t type;
    std::vector<uint8_t> data;
    uint64_t offset = 0;  // set by Build unless forced
    bool force_offset = false;
  };
  uint32_t version = 3;
  uint32_t alignment = 32;
  bool write_alignment = true;  // false: the reader takes its default, 32
  std::vector<Tensor> tensors;
  std::vector<uint8_t> kv;  // extra metadata pairs, already encoded
  uint64_t kv_count = 0;

  static void U32(std::vector<uint8_t>& b, uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  static void U64(std::vector<uint8_t>& b, uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  static void Str(std::vector<uint8_t>& b, const std::string& s) {
    U64(b, s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void AddKvString(const std::string& key, const std::string& value) {
    Str(kv, key), U32(kv, 8), Str(kv, value), ++kv_count;
  }
  void AddKvStrings(const std::string& key, size_t n) {  // an array of strings, as a vocabulary
    Str(kv, key), U32(kv, 9), U32(kv, 8), U64(kv, n);
    for (size_t i = 0; i < n; ++i) Str(kv, "tok" + std::to_string(i));
    ++kv_count;
  }
  void AddKvNested(const std::string& key) {  // [[1, 2], [3]] of u16
    Str(kv, key), U32(kv, 9), U32(kv, 9), U64(kv, 2);
    U32(kv, 2), U64(kv, 2), kv.insert(kv.end(), {1, 0, 2, 0});
    U32(kv, 2), U64(kv, 1), kv.insert(kv.end(), {3, 0});
    ++kv_count;
  }
  void AddKvF32(const std::string& key) {
    Str(kv, key), U32(kv, 6), U32(kv, 0x3f800000), ++kv_count;
  }

  // Returns the file and its data section's start.
  std::vector<uint8_t> Build(uint64_t* data_start = nullptr) {
    std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
    U32(b, version);
    U64(b, tensors.size());
    U64(b, kv_count + (write_alignment ? 1 : 0));
    if (write_alignment) Str(b, "general.alignment"), U32(b, 4), U32(b, alignment);
    b.insert(b.end(), kv.begin(), kv.end());
    uint64_t off = 0;
    for (Tensor& t : tensors) {
      if (!t.force_offset) t.offset = off;
      off = (t.offset + t.data.size() + alignment - 1) / alignment * alignment;
      Str(b, t.name);
      U32(b, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t n : t.ne) U64(b, n);
      U32(b, t.type);
      U64(b, t.offset);
    }
    const uint64_t start = (b.size() + alignment - 1) / alignment * alignment;
    b.resize(start, 0);
    for (const Tensor& t : tensors) {
      if (b.size() < start + t.offset + t.data.size())
        b.resize(start + t.offset + t.data.size(), 0);
      std::copy(t.data.begin(), t.data.end(), b.begin() + static_cast<ptrdiff_t>(start + t.offset));
    }
    if (data_start) *data_start = start;
    return b;
  }
};

}  // namespace zipnn::test
