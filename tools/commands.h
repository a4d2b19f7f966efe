// The zipnn tool's subcommands, as functions the CLI (and tests) call. Each returns an error whose
// message names the file concerned; the caller prints it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "codec/status.h"

namespace zipnn::tool {

struct CompressOptions {
  std::string input;
  std::string output;    // empty: input + ".znn"
  bool force = false;    // replace an existing output
  bool quiet = false;    // no summary on stderr
  unsigned threads = 0;  // 0: all cores
  uint32_t chunk_size = 256u << 10;
  int level = 3;  // zstd level for the streams coded with zstd
};
Status Compress(const CompressOptions& opts);

struct DecompressOptions {
  std::string input;
  std::string output;  // empty: input without ".znn"
  bool force = false;
  bool quiet = false;
  unsigned threads = 0;
};
Status Decompress(const DecompressOptions& opts);

// Writes original bytes [offset, offset + length) to stdout (length: to the end by default).
struct CatOptions {
  std::string input;
  uint64_t offset = 0;
  std::optional<uint64_t> length;
};
Status Cat(const CatOptions& opts);

// Prints frame statistics per method and per dtype, as Markdown tables.
Status Info(const std::string& input);

struct BenchOptions {
  std::vector<std::string> files;  // empty: the corpus, or a synthetic model
  unsigned threads = 0;            // for the "all threads" columns; 0: all cores
  double min_seconds = 0.3;        // each speed is the best of runs totalling at least this
};
Status Bench(const BenchOptions& opts);

}  // namespace zipnn::tool
