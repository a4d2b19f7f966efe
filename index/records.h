// Byte encodings of the store's LMDB keys and values (docs/format.md, "The store").
// Keys are big-endian so that LMDB's byte order is numeric order; values are little-endian
// fixed-size records. Internal to index/.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "codec/codec.h"
#include "index/index.h"

namespace zipnn::index::rec {

inline void PutBE64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline uint64_t GetBE64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
inline void PutBE32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline uint32_t GetBE32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | p[i];
  return v;
}
template <class T>
inline void PutLE(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    p[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
}
template <class T>
inline T GetLE(const uint8_t* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

// ---- keys ----
struct InodeKey {
  uint8_t b[8];
  explicit InodeKey(uint64_t ino) { PutBE64(b, ino); }
  std::span<const uint8_t> bytes() const { return b; }
};

// (inode BE, name) for dirents and xattrs.
inline std::string NamedKey(uint64_t ino, std::string_view name) {
  std::string k(8 + name.size(), '\0');
  PutBE64(reinterpret_cast<uint8_t*>(k.data()), ino);
  std::memcpy(k.data() + 8, name.data(), name.size());
  return k;
}

struct ExtentKey {
  uint8_t b[16];
  ExtentKey(uint64_t ino, uint64_t offset) {
    PutBE64(b, ino);
    PutBE64(b + 8, offset);
  }
  std::span<const uint8_t> bytes() const { return b; }
};

// ---- values ----
inline constexpr size_t kInodeSize = 56;
inline void EncodeInode(const InodeAttr& a, uint8_t* p) {
  std::memset(p, 0, kInodeSize);
  p[0] = static_cast<uint8_t>(a.kind);
  PutLE<uint32_t>(p + 4, a.mode);
  PutLE<uint32_t>(p + 8, a.uid);
  PutLE<uint32_t>(p + 12, a.gid);
  PutLE<uint32_t>(p + 16, a.nlink);
  PutLE<uint64_t>(p + 24, a.size);
  PutLE<int64_t>(p + 32, a.atime_ns);
  PutLE<int64_t>(p + 40, a.mtime_ns);
  PutLE<int64_t>(p + 48, a.ctime_ns);
}
inline std::optional<InodeAttr> DecodeInode(uint64_t ino, std::span<const uint8_t> v) {
  if (v.size() != kInodeSize || v[0] < 1 || v[0] > 3) return std::nullopt;
  const uint8_t* p = v.data();
  InodeAttr a;
  a.ino = ino;
  a.kind = static_cast<InodeKind>(p[0]);
  a.mode = GetLE<uint32_t>(p + 4);
  a.uid = GetLE<uint32_t>(p + 8);
  a.gid = GetLE<uint32_t>(p + 12);
  a.nlink = GetLE<uint32_t>(p + 16);
  a.size = GetLE<uint64_t>(p + 24);
  a.atime_ns = GetLE<int64_t>(p + 32);
  a.mtime_ns = GetLE<int64_t>(p + 40);
  a.ctime_ns = GetLE<int64_t>(p + 48);
  return a;
}

inline constexpr size_t kDirentSize = 9;  // child inode LE, kind
inline void EncodeDirent(uint64_t child, InodeKind kind, uint8_t* p) {
  PutLE<uint64_t>(p, child);
  p[8] = static_cast<uint8_t>(kind);
}

inline constexpr size_t kExtentSize = 24;
struct Extent {
  ChunkHash hash{};
  uint32_t raw_size = 0;
  DType dtype = DType::kBytes;
};
inline void EncodeExtent(const Extent& e, uint8_t* p) {
  std::memset(p, 0, kExtentSize);
  std::memcpy(p, e.hash.data(), 16);
  PutLE<uint32_t>(p + 16, e.raw_size);
  p[20] = static_cast<uint8_t>(e.dtype);
}
inline std::optional<Extent> DecodeExtent(std::span<const uint8_t> v) {
  if (v.size() != kExtentSize || v[20] >= kNumDTypes) return std::nullopt;
  Extent e;
  std::memcpy(e.hash.data(), v.data(), 16);
  e.raw_size = GetLE<uint32_t>(v.data() + 16);
  e.dtype = static_cast<DType>(v[20]);
  return e;
}

inline constexpr size_t kChunkSize = 32;
struct Chunk {
  uint32_t pack_id = 0;
  uint64_t pack_offset = 0;
  uint32_t frame_size = 0;
  uint32_t raw_size = 0;
  Method method = Method::kRaw;
  DType dtype = DType::kBytes;  // as coded (the frame header's)
  uint64_t refcount = 0;
};
inline void EncodeChunk(const Chunk& c, uint8_t* p) {
  std::memset(p, 0, kChunkSize);
  PutLE<uint32_t>(p, c.pack_id);
  PutLE<uint64_t>(p + 4, c.pack_offset);
  PutLE<uint32_t>(p + 12, c.frame_size);
  PutLE<uint32_t>(p + 16, c.raw_size);
  p[20] = static_cast<uint8_t>(c.method);
  p[21] = static_cast<uint8_t>(c.dtype);
  PutLE<uint64_t>(p + 24, c.refcount);
}
inline std::optional<Chunk> DecodeChunk(std::span<const uint8_t> v) {
  if (v.size() != kChunkSize || v[20] >= kNumMethods || v[21] >= kNumDTypes) return std::nullopt;
  const uint8_t* p = v.data();
  Chunk c;
  c.pack_id = GetLE<uint32_t>(p);
  c.pack_offset = GetLE<uint64_t>(p + 4);
  c.frame_size = GetLE<uint32_t>(p + 12);
  c.raw_size = GetLE<uint32_t>(p + 16);
  c.method = static_cast<Method>(p[20]);
  c.dtype = static_cast<DType>(p[21]);
  c.refcount = GetLE<uint64_t>(p + 24);
  return c;
}

// Chunk hashes are already uniform: their first bytes are a fine hash-table hash.
struct ChunkHashHasher {
  size_t operator()(const ChunkHash& h) const {
    size_t v;
    std::memcpy(&v, h.data(), sizeof(v));
    return v;
  }
};
using ChunkMap = std::unordered_map<ChunkHash, Chunk, ChunkHashHasher>;

// ---- meta keys ----
inline constexpr std::string_view kMetaFormat = "format";             // u32 LE
inline constexpr std::string_view kMetaNextInode = "next_inode";      // u64 LE
inline constexpr std::string_view kMetaCurrentPack = "current_pack";  // u32 LE
inline std::string PackLengthKey(uint32_t pack_id) {  // "pack/" + u32 BE -> committed length u64 LE
  std::string k = "pack/";
  k.resize(9);
  PutBE32(reinterpret_cast<uint8_t*>(k.data()) + 5, pack_id);
  return k;
}

}  // namespace zipnn::index::rec
