// The Huffman stream coder: the entropy stage of the codec (internal to codec/).
//
// A stream of byte symbols is coded as blocks, each with its own length-limited canonical Huffman
// table and four interleaved bitstreams (the stream split in four quarters) so the decoder runs
// four independent dependency chains. Blocks follow statistics: the encoder merges segments
// (tensor starts) whose joint table costs less than separate ones. The decoder reads up to four
// symbols per table lookup, and caches built tables by their serialized form, so consecutive
// chunks of one tensor (whose tables are usually identical) skip the build.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

namespace zipnn::internal {

inline constexpr int kHufMaxBits = 11;  // code length limit = decoder lookup width

using Histogram = std::array<uint32_t, 256>;

void CountSymbols(std::span<const uint8_t> syms, Histogram& h);

// Order-0 entropy of a histogram, in bits.
double EntropyBits(const Histogram& h);
// The same for any counts, plus `extra` occurrences of one more symbol.
double EntropyBits(std::span<const uint32_t> counts, uint32_t extra = 0);

struct HufBlockPlan {
  uint32_t begin = 0, end = 0;  // symbol range
  Histogram hist{};
  std::array<uint8_t, 256> len{};  // code lengths (0 = unused); all 0 for a single-symbol block
  int single = -1;                 // the symbol when the block holds only one
  uint64_t cost_bits = 0;          // payload + table + block header
  size_t table_at = 0, table_size = 0;  // its serialized table in HufPlan::tables
};

struct HufPlan {
  std::vector<HufBlockPlan> blocks;
  uint64_t cost_bytes = 0;           // estimated encoded size
  double entropy_bits = 0;           // sum of the blocks' order-0 entropy
  std::vector<uint8_t> tables;       // the blocks' serialized tables, one after another
  std::vector<uint32_t> pair_codes;  // EncodeHuffman's scratch: codes of symbol pairs
  std::vector<uint8_t> lanes;        // EncodeHuffman's scratch: the four coded lanes
};

// Plans the blocks of `syms`. `segments` are sorted symbol offsets where statistics may change.
void PlanHuffman(std::span<const uint8_t> syms, std::span<const uint32_t> segments, HufPlan& plan);

// Appends the coded stream for `syms` following `plan`.
void EncodeHuffman(std::span<const uint8_t> syms, HufPlan& plan, std::vector<uint8_t>& out);

// Decode tables shared by the decoders of many threads: chunks of one tensor share their
// tables, so whichever thread meets a table first builds it for all. Thread-safe.
class SharedHuffmanTables;
struct CodeLengths;
class TableMemory;

// Decodes one coded stream into exactly out.size() symbols. Keeps a cache of decode tables,
// backed by `shared` when given.
class HuffmanDecoder {
 public:
  explicit HuffmanDecoder(SharedHuffmanTables* shared = nullptr);
  ~HuffmanDecoder();
  // Returns false if `in` is malformed or does not decode to exactly out.size() symbols.
  // `varint_lanes`: lane sizes are varints (frame version 2), not u32s (version 1).
  bool Decode(std::span<const uint8_t> in, std::span<uint8_t> out, bool varint_lanes = true);

  struct Table;

 private:
  const Table* GetTable(std::span<const uint8_t> desc, const CodeLengths& c, bool multi);
  std::shared_ptr<const Table> BuildTable(std::span<const uint8_t> desc, uint64_t hash,
                                          const CodeLengths& c, bool multi);
  static constexpr int kCacheSize = 8;
  SharedHuffmanTables* shared_;
  std::shared_ptr<TableMemory> memory_;  // the shared tables' when shared, else our own
  std::array<std::shared_ptr<const Table>, kCacheSize> cache_;
  std::vector<uint64_t> levels_ = std::vector<uint64_t>(2u << kHufMaxBits);  // table-build scratch
  int next_victim_ = 0;
};

class SharedHuffmanTables {
 public:
  explicit SharedHuffmanTables(size_t max_tables);
  ~SharedHuffmanTables();
  // The table described by `desc` (with `multi`, one that has the multi-symbol part), or null.
  std::shared_ptr<const HuffmanDecoder::Table> Find(uint64_t hash, std::span<const uint8_t> desc,
                                                    bool multi);
  void Put(std::shared_ptr<const HuffmanDecoder::Table> table);

 private:
  friend class HuffmanDecoder;
  const size_t max_tables_;
  const std::shared_ptr<TableMemory> memory_;
  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<const HuffmanDecoder::Table>> tables_;
  std::deque<uint64_t> order_;  // insertion order, for eviction
};

}  // namespace zipnn::internal
