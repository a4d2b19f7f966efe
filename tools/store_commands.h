// The store subcommands of zipnnfs (init, import, export, cat, stats, fsck, gc). Each prints what
// it did, or why it failed, and returns the process's exit code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "codec/status.h"

namespace zipnn::tool::store {

inline constexpr int kExitError = 1;

// Prints "zipnnfs: MESSAGE" to stderr; returns kExitError.
int Fail(const Status& s);

int Init(const std::string& store_dir);
// As cp -a SRC... TO/ into the store; 1 when an entry could not be imported (the rest are).
int Import(const std::string& store_dir, const std::vector<std::string>& sources,
           const std::string& to, unsigned threads, bool quiet);
// As cp -a of the root (or PATH) to DEST; 1 when an entry could not be exported (the rest are).
int Export(const std::string& store_dir, const std::string& dest, const std::string& path);
// Bytes [offset, offset + length) of a file (to its end without a length) to stdout.
int Cat(const std::string& store_dir, const std::string& path, uint64_t offset,
        std::optional<uint64_t> length);
// Per-file and total figures of a store, or a mount point's live figures.
int Stats(const std::string& store_dir, std::vector<std::string> paths, bool json);
// 0: clean (with repair: clean after it); 1: damaged, or the check could not run.
int Fsck(const std::string& store_dir, bool quick, bool repair);
int Gc(const std::string& store_dir);

}  // namespace zipnn::tool::store
