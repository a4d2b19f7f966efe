// zipnn codec: lossless compression of model weights, one self-describing frame per chunk.
//
// A frame is a 32-byte header (magic, version, method, element type, sizes, XXH3-64 of the
// uncompressed bytes, header check) followed by its payload. Frames are independent, so any
// chunk decodes on its own and chunks code in parallel. Decoding always verifies the checksum.
// This module knows nothing of files, FUSE or LMDB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "codec/status.h"

namespace zipnn {

// Element type of a chunk. Values are stored in frames: never renumber.
enum class DType : uint8_t {
  kBytes = 0,  // untyped: zstd or raw (floats detected by sampling)
  kBF16 = 1,
  kF16 = 2,
  kF32 = 3,
  kF64 = 4,
  kF8E4M3 = 5,
  kF8E5M2 = 6,
  kI8 = 7,
  kI16 = 8,
  kI32 = 9,
  kI64 = 10,
  kU8 = 11,
  kU16 = 12,
  kU32 = 13,
  kU64 = 14,
  kBool = 15,
  // Block-quantized llama.cpp (GGUF) types: an element is a block (byte_groups.cc lays out its
  // fields: F16 scales apart from the quants).
  kQ4_0 = 16,
  kQ4_1 = 17,
  kQ5_0 = 18,
  kQ5_1 = 19,
  kQ8_0 = 20,
  kQ2_K = 21,
  kQ3_K = 22,
  kQ4_K = 23,
  kQ5_K = 24,
  kQ6_K = 25,
};
inline constexpr int kNumDTypes = 26;

std::string_view DTypeName(DType t);
size_t DTypeSize(DType t);  // bytes per element (a block's for block types); 1 for kBytes
bool IsFloat(DType t);
// safetensors dtype string ("BF16", "F8_E4M3", ...) to DType.
std::optional<DType> DTypeFromSafetensors(std::string_view s);
std::optional<DType> DTypeFromName(std::string_view s);  // inverse of DTypeName

// How a frame's payload is coded. Values are stored in frames: never renumber.
enum class Method : uint8_t {
  kRaw = 0,      // payload is the chunk
  kZero = 1,     // chunk is all zero bytes; no payload
  kZstd = 2,     // payload is one zstd frame
  kGrouped = 3,  // byte-grouped streams, each raw, zero, Huffman or zstd
};
inline constexpr int kNumMethods = 4;
std::string_view MethodName(Method m);

inline constexpr size_t kFrameHeaderSize = 32;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;  // largest chunk a frame may hold

// Upper bound of a frame's size for a chunk of `raw_size` bytes (RAW is always possible).
inline constexpr size_t MaxFrameSize(size_t raw_size) { return kFrameHeaderSize + raw_size; }

struct FrameInfo {
  Method method = Method::kRaw;
  DType dtype = DType::kBytes;  // as coded: for untyped input, the float type detected, if any
  uint32_t raw_size = 0;        // uncompressed bytes
  uint32_t payload_size = 0;    // bytes after the header
  uint64_t checksum = 0;        // XXH3-64 of the uncompressed bytes
  uint8_t version = 0;          // frame format version
  bool joint = false;           // BF16 exponent and top mantissa bits coded as one symbol
  bool shifted = false;         // float exponents shifted per column of the tensor
  size_t frame_size() const { return kFrameHeaderSize + payload_size; }
};

// Validates a frame header (magic, version, enums, sizes, header check). `frame` needs only the
// first kFrameHeaderSize bytes.
Result<FrameInfo> ParseFrameHeader(std::span<const uint8_t> frame);

// XXH3-64, the checksum frames carry.
uint64_t Checksum(std::span<const uint8_t> data);
// Whether every byte is zero (what a ZERO frame holds; an empty span is).
bool AllZero(std::span<const uint8_t> data);

struct EncodeOptions {
  int zstd_level = 3;                  // for untyped bytes and zstd-coded streams
  std::optional<Method> force_method;  // tests and tools: skip the automatic choice
  double min_saving = 0.02;            // below this saving, store raw
  int joint_k = -1;  // BF16 joint coding: -1 chosen per chunk, 0 never, 1..3 forced (tests)
  bool exponent_shift = true;  // BF16, F16, F32: shift exponents per column where that pays
};

// Where a chunk lies in the matrix view of the tensor it starts with: the encoder may then give
// each column its own exponent offset (weights have a scale per output channel), where that
// measurably pays. Small tensors after it in the chunk continue the same columns (layers of one
// width, and their biases, follow each other). All zero: unknown.
struct TensorGrid {
  uint64_t first = 0;    // index in the tensor of the chunk's first element
  uint64_t columns = 0;  // the tensor's last dimension other than 1 (a row of the matrix view)
};

// Per-frame statistics an encoder reports, for `zipnn bench`/`info`.
struct EncodeStats {
  uint64_t entropy_bits = 0;  // order-0 entropy of the streams as coded, in bits
};

// Encodes chunks into frames. Holds scratch memory and a zstd context: use one per thread.
class FrameEncoder {
 public:
  explicit FrameEncoder(const EncodeOptions& opts = {});
  ~FrameEncoder();
  FrameEncoder(const FrameEncoder&) = delete;
  FrameEncoder& operator=(const FrameEncoder&) = delete;

  // Appends one frame holding `chunk` to `out`. `segments` are optional element offsets inside
  // the chunk where statistics may change (tensor starts); the coder may give each its own table.
  // `grid` places the chunk in the columns of the tensor it starts with. `checksum`: the chunk's
  // Checksum(), where the caller has it already (a wrong one makes a frame that never decodes).
  Status Encode(std::span<const uint8_t> chunk, DType dtype, std::vector<uint8_t>& out,
                std::span<const uint32_t> segments = {}, EncodeStats* stats = nullptr,
                const TensorGrid& grid = {}, std::optional<uint64_t> checksum = std::nullopt);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

namespace internal {
class SharedHuffmanTables;
}

// Huffman decode tables shared by the FrameDecoders of many threads (thread-safe). Chunks of one
// tensor share their tables; with a shared cache whichever thread decodes one first builds them
// for all, instead of every thread building its own. Kept small: hits come from neighbouring
// chunks (2-6% of lookups hit, over the corpus and a generated model), and each table held is
// 20 KiB a process must fault in (256 cost `zipnn decompress` of a 277 MB model 8% of its time).
class DecoderTableCache {
 public:
  explicit DecoderTableCache(size_t max_tables = 32);
  ~DecoderTableCache();
  DecoderTableCache(const DecoderTableCache&) = delete;
  DecoderTableCache& operator=(const DecoderTableCache&) = delete;

 private:
  friend class FrameDecoder;
  std::unique_ptr<internal::SharedHuffmanTables> tables_;
};

// Decodes frames. Caches Huffman decode tables across frames: use one per thread, and give the
// decoders of a thread pool one shared DecoderTableCache (which must outlive them).
class FrameDecoder {
 public:
  FrameDecoder();
  explicit FrameDecoder(DecoderTableCache* shared);
  ~FrameDecoder();
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Decodes the one frame at the start of `frame` into `out`, whose size must equal the frame's
  // raw_size. Verifies the checksum. Any malformed input yields an error, never a crash.
  Status Decode(std::span<const uint8_t> frame, std::span<uint8_t> out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- Chunk planning ----------------------------------------------------------------------

// One chunk of a file: a byte range and the element type it holds.
struct ChunkSpec {
  uint64_t offset = 0;
  uint32_t size = 0;
  DType dtype = DType::kBytes;
  std::vector<uint32_t> segments;  // element offsets of tensor starts inside the chunk
  TensorGrid grid;                 // for a chunk that starts in a tensor of 2+ dimensions
};

struct PlanOptions {
  uint32_t chunk_size = 256u << 10;
};

// Reads `out.size()` bytes at `offset` of the file being planned.
using ReadAtFn = std::function<Status(uint64_t offset, std::span<uint8_t> out)>;

// A model file's tensor layout (from a safetensors or GGUF header): where each tensor's bytes are
// and their dtype.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kBytes;  // as coded (safetensors dtypes newer than DType map to one)
  std::vector<uint64_t> shape;  // in coded elements (complex64 [.., n] is F32 [.., 2n])
  uint64_t begin = 0;           // absolute file offsets
  uint64_t end = 0;
};
struct TensorLayout {
  uint64_t data_start = 0;          // where the header ends
  std::vector<TensorInfo> tensors;  // ordered by begin
};
inline constexpr uint64_t kMaxSafetensorsHeader = 100u << 20;

// Parses and strictly validates a safetensors header (size cap, dtypes, offsets in bounds,
// ordered and non-overlapping, sizes matching shapes).
Result<TensorLayout> ParseSafetensorsHeader(const ReadAtFn& read, uint64_t file_size);
// The same for a GGUF file (llama.cpp), versions 2 and 3: float and integer tensors get their
// dtype, block-quantized ones are untyped bytes up to the next tensor.
Result<TensorLayout> ParseGgufHeader(const ReadAtFn& read, uint64_t file_size);
// Whichever of the two the file is; kCorrupt when neither.
Result<TensorLayout> ParseTensorLayout(const ReadAtFn& read, uint64_t file_size);
// The arrays of a NumPy .npz archive (stored .npy members of little-endian numeric dtypes), each
// a tensor; kCorrupt for any other file or a malformed archive. data_start is 0: the zip and .npy
// headers lie between the tensors.
Result<TensorLayout> ParseNpzLayout(const ReadAtFn& read, uint64_t file_size);

// Plans the chunks of a file. For a safetensors, GGUF or .npz file (told by its content, a valid
// header, not by its name: the Hugging Face cache names its blobs by hash) no chunk mixes dtypes
// and tensors start chunks where that costs little; the header is untyped. Other files are untyped
// fixed-size chunks, cut where their elements start when a sample shows it (floats at an odd
// offset, as in legacy torch.save files). Covers [0, file_size) in order.
Result<std::vector<ChunkSpec>> PlanChunks(const ReadAtFn& read, uint64_t file_size,
                                          const PlanOptions& opts = {});

// Plans [begin, end) of an untyped region as fixed-size chunks.
void PlanUntyped(uint64_t begin, uint64_t end, uint32_t chunk_size, std::vector<ChunkSpec>& out);

// ---- Parallel coding ---------------------------------------------------------------------

// A fixed pool of worker threads for chunk-level parallelism.
class ThreadPool {
 public:
  // `threads` participants in all: the caller of ParallelFor and threads - 1 workers.
  explicit ThreadPool(unsigned threads);  // 0 = hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const;  // participants
  // Runs fn(i, worker) for every i in [0, n) on the pool's threads and the caller's; returns when
  // all are done. `worker` is in [0, size()) and no two concurrent calls of fn share one.
  // One ParallelFor at a time per pool.
  void ParallelFor(size_t n, const std::function<void(size_t i, unsigned worker)>& fn);
  // A pipeline without barriers: make(i, worker, buf) fills a buffer for every i in [0, n) on the
  // pool, and consume(i, buf) takes the buffers strictly in order of i, one call at a time, on
  // whichever pool thread finishes the next one in line (or a thread of its own when the pool
  // has one thread, so that consuming overlaps making). At most `window` buffers are made and
  // not yet consumed (buffers are recycled: make must not assume them empty). Stops at the first
  // failure in order of i and returns it.
  Status RunOrdered(
      size_t n, size_t window,
      const std::function<Status(size_t i, unsigned worker, std::vector<uint8_t>& buf)>& make,
      const std::function<Status(size_t i, std::span<const uint8_t> buf)>& consume);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Encodes and decodes many chunks on a thread pool with one codec context per thread.
class ParallelCodec {
 public:
  ParallelCodec(unsigned threads, const EncodeOptions& opts = {});  // 0 = all cores
  ~ParallelCodec();
  unsigned threads() const;

  // frames[i] = the frame of data[plan[i].offset - base, +plan[i].size).
  Status EncodeAll(std::span<const uint8_t> data, uint64_t base, std::span<const ChunkSpec> plan,
                   std::vector<std::vector<uint8_t>>& frames,
                   std::vector<EncodeStats>* stats = nullptr);
  // Decodes frames[i] into outs[i]. Returns the first error, if any (all frames are attempted).
  Status DecodeAll(std::span<const std::span<const uint8_t>> frames,
                   std::span<const std::span<uint8_t>> outs);
  // Runs fn(i, worker) for every i in [0, n) on the pool, for callers that do their own I/O
  // around the worker's codec contexts (reading and writing where the data is hot in cache).
  // Once a call fails, calls not yet started are skipped; returns the failure of lowest i.
  Status Run(size_t n, const std::function<Status(size_t i, unsigned worker)>& fn);
  // ThreadPool::RunOrdered on this codec's pool (make uses the worker's codec contexts).
  Status RunOrdered(
      size_t n, size_t window,
      const std::function<Status(size_t i, unsigned worker, std::vector<uint8_t>& buf)>& make,
      const std::function<Status(size_t i, std::span<const uint8_t> buf)>& consume) {
    return pool_.RunOrdered(n, window, make, consume);
  }
  FrameEncoder& encoder(unsigned worker) { return *encoders_[worker]; }
  FrameDecoder& decoder(unsigned worker) { return *decoders_[worker]; }

 private:
  ThreadPool pool_;
  std::vector<std::unique_ptr<FrameEncoder>> encoders_;
  DecoderTableCache tables_;  // shared by the decoders (declared first: it outlives them)
  std::vector<std::unique_ptr<FrameDecoder>> decoders_;
};

}  // namespace zipnn
