// zipnnfs bench-import: import speed against the codec's all-thread compress speed.
#pragma once

#include <string>
#include <vector>

#include "codec/status.h"

namespace zipnn::tool {

struct BenchImportOptions {
  std::vector<std::string> sources;  // files or directories; empty: default_corpus
  std::string default_corpus;
  std::string scratch = "/tmp";  // stores are created (and removed) below this directory
  unsigned threads = 0;          // 0: all cores
  int rounds = 5;                // each round: one codec pass, then one import into a new store
  uint64_t synthetic_mb = 0;  // > 0: instead of sources, generated BF16 models of about this size
};

// Prints a Markdown table: best and median MB/s of both, their ratio, and store size against the
// sum of the frames.
Status BenchImport(const BenchImportOptions& opts);

}  // namespace zipnn::tool
