// Faults inside an LMDB map reported as index damage (internal to index/).
//
// LMDB trusts its file: a truncated data.mdb, or a damaged page whose offsets point past the
// file, makes it read memory the map has no page for, and the process dies of SIGBUS or
// SIGSEGV with no word about why. A fault at an address inside a watched map, or in LMDB's own
// code, instead writes which index is damaged to stderr and exits with status 1. Other faults
// keep their usual handling.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace zipnn::index::lmdb {

class MapGuard {
 public:
  MapGuard() = default;
  MapGuard(const MapGuard&) = delete;
  MapGuard& operator=(const MapGuard&) = delete;
  ~MapGuard() { Unwatch(); }

  // Watches [addr, addr + size) (and a page of node offsets past it) as the map of the index
  // file `path`, in place of what this guard watched before. Without a free slot (more than a
  // few environments open at once) it watches nothing.
  void Watch(const void* addr, size_t size, const std::string& path);
  // Watches this process's mapping of the file (device, inode) from its start, if it has one.
  void WatchFile(dev_t dev, ino_t ino, const std::string& path);
  void Unwatch();

 private:
  int slot_ = -1;
};

}  // namespace zipnn::index::lmdb
