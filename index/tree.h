// Copying whole trees between the host filesystem and a store, like `cp -a`: regular files,
// directories and symlinks (targets kept as they are, so relative ones stay relative), with
// modes, owners, times and extended attributes. Other file types are skipped and reported.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "index/index.h"

namespace zipnn::index {

struct TreeSummary {
  uint64_t files = 0, directories = 0, symlinks = 0;
  uint64_t skipped = 0;          // import: special files (the store holds none)
  uint64_t failed = 0;           // import: entries left out (ImportOptions::failed)
  uint64_t raw_bytes = 0;        // file bytes copied
  uint64_t frame_bytes = 0;      // import: frame bytes of the files' chunks (before dedup)
  uint64_t new_frame_bytes = 0;  // import: bytes appended to packs
};

struct ImportOptions {
  // Called often during long files and after each file, on the import's writer thread: the
  // path being imported and the running totals of files and bytes (raw_bytes includes the part
  // of the current file done so far).
  std::function<void(const std::string& path, const TreeSummary& totals)> progress;
  // A commit group closes after this long (BulkAddOptions::commit_interval_ms); 0 commits every
  // entry on its own.
  uint32_t commit_interval_ms = BulkAddOptions{}.commit_interval_ms;
  // Told about each special file skipped (sockets, devices, fifos), and each entry whose times
  // the store cannot hold (before 1677 or after 2262: kept as the nearest end of that range).
  std::function<void(const std::string& path, const std::string& why)> skipped;
  // With this set, an entry of the tree that cannot be imported (it vanished, or cannot be read
  // or listed, or changed while it was read) is told here and left out, and the import goes on,
  // as cp -a does; without it, the first such entry stops the import. Failures of the store (a
  // full disk, say) always stop it. Called on the walking thread and on the import's writer
  // thread, possibly at once.
  std::function<void(const std::string& path, const Status& why)> failed;
  // The store's own directory, skipped (and told to `skipped`) if the tree holds it: its packs
  // grow while they would be read, and a store inside itself is no copy of anything.
  std::string store_dir;
};

// Imports host path `src` (a file, directory or symlink; not followed) as entry `name` of store
// directory `parent` (an empty `name`: the entries of directory `src` go into `parent`, as
// cp -a SRC/. does), through one Store::BeginBulkAdd pipeline (files compressed in parallel,
// committed in groups; each entry whole or absent after a crash). As with cp -a, an existing
// directory of that name is merged into (and gets the source's mode, owner and attributes), an
// existing file or symlink is replaced.
Status ImportTree(Store& store, const std::string& src, uint64_t parent, const std::string& name,
                  const ImportOptions& opts, TreeSummary& summary);
// The same for several sources, through one pipeline (hard links between them are kept), in order.
struct ImportSource {
  std::string path, name;
};
Status ImportTrees(Store& store, const std::vector<ImportSource>& sources, uint64_t parent,
                   const ImportOptions& opts, TreeSummary& summary);

struct ExportOptions {
  // With this set, an entry that cannot be exported (its name taken by a directory, or a
  // non-directory where a directory goes; a destination not writable; a damaged chunk) is told
  // here and left out, and the export goes on, as cp -a does; without it, the first failure
  // stops the export. A full disk always stops it.
  std::function<void(const Status& why)> failed;
};

// Exports store inode `ino` (and, for a directory, everything below it) to host path `dest`, like
// cp -a: an existing directory is merged into, an existing file or symlink replaced (atomically:
// written under a temporary name beside it, then renamed over it). Owners are restored when
// running as root.
Status ExportTree(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary,
                  const ExportOptions& opts = {});
// The same for the entries of directory `ino`, into existing directory `dest` (cp -a SRC/. DEST;
// hard links between them are kept).
Status ExportTreeEntries(Store& store, uint64_t ino, const std::string& dest, TreeSummary& summary,
                         const ExportOptions& opts = {});

// Writes bytes [begin, end) of file `ino` (end within the file) to `fd`, in order: pieces of
// whole chunks are decoded on all cores while the previous ones are written. Errors start with
// `label`, and a damaged chunk's name its byte range.
Status WriteFileRange(Store& store, uint64_t ino, uint64_t begin, uint64_t end, int fd,
                      const std::string& label);

}  // namespace zipnn::index
