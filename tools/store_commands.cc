// The store subcommands of zipnnfs: import, export, cat, stats, fsck and gc.
#include "tools/store_commands.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "codec/codec.h"
#include "codec/container.h"
#include "fs/fs.h"
#include "index/index.h"
#include "index/tree.h"
#include "tools/file_io.h"

namespace zipnn::tool::store {

using namespace zipnn::index;

int Fail(const Status& s) {
  std::fprintf(stderr, "zipnnfs: %s\n", s.message().c_str());
  return kExitError;
}

namespace {

double Mb(uint64_t bytes) { return static_cast<double>(bytes) / 1e6; }
// Stored bytes over original bytes, lower is better: the convention of `zipnn` and the benches.
double Ratio(uint64_t raw, uint64_t stored) {
  return raw == 0 ? 0.0 : static_cast<double>(stored) / static_cast<double>(raw);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The name SRC gets in the store, as cp -a names it: its last component, "." and ".." resolved
// first; none for SRC/. (its entries go straight in, not a directory of them).
std::string ImportName(const std::string& src) {
  std::string path = src;
  while (path.size() > 1 && path.back() == '/') path.pop_back();  // (SRC/./ too)
  if (path == "." || path.ends_with("/.")) return "";
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::absolute(src, ec).lexically_normal();
  std::string name = BaseName(ec ? src : p.string());
  return name;
}

// Whether `s` is text JSON can hold: well-formed UTF-8 (as nlohmann's strict dump checks it).
bool IsUtf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

// A store path for JSON, which holds only Unicode: a name that is not UTF-8 (Linux allows any
// bytes) gets U+FFFD in "path" when dumped, and its exact bytes in hex as "path_hex".
void PutJsonPath(nlohmann::json& j, const std::string& path) {
  j["path"] = path;
  if (IsUtf8(path)) return;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (const char c : path) {
    hex += kHex[static_cast<uint8_t>(c) >> 4];
    hex += kHex[static_cast<uint8_t>(c) & 15];
  }
  j["path_hex"] = hex;
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& dir, bool writable, unsigned threads) {
  StoreOptions opts;
  opts.writable = writable;
  opts.threads = threads;
  return Store::Open(dir, opts);
}

// The components of a store path, without empty ones and "." ("a//./b/" is {"a", "b"}).
std::vector<std::string> PathParts(std::string_view path) {
  std::vector<std::string> parts;
  for (size_t pos = 0; pos <= path.size();) {
    const size_t slash = std::min(path.find('/', pos), path.size());
    const std::string_view part = path.substr(pos, slash - pos);
    if (!part.empty() && part != ".") parts.emplace_back(part);
    pos = slash + 1;
  }
  return parts;
}

// Resolves a store path as the kernel resolves a host path: symlinks on the way (and the last
// component too, with `follow_last`) are followed, relative targets from their directory, ".." to
// the parent (a Hugging Face cache's snapshots/REV/FILE -> ../../blobs/HASH). An absolute target
// names a host path, not one in the store: refused.
Result<InodeAttr> ResolveStorePath(Store& store, const std::string& path, bool follow_last) {
  // "a/" and "a/." name a directory, as for the kernel: a last symlink is followed, and a file
  // there is no directory (cat of "f/" read the file).
  const bool dir_wanted = path.ends_with('/') || path.ends_with("/.");
  follow_last = follow_last || dir_wanted;
  Result<InodeAttr> root = store.GetAttr(kRootInode);
  if (!root.ok()) return root.status();
  std::vector<InodeAttr> dirs{*root};  // the directories walked down so far, for ".."
  InodeAttr cur = *root;
  const std::vector<std::string> parts = PathParts(path);
  std::deque<std::string> todo(parts.begin(), parts.end());
  for (int links = 0; !todo.empty();) {
    const std::string part = std::move(todo.front());
    todo.pop_front();
    if (cur.kind != InodeKind::kDirectory) return Status::NotFound("not a directory on the way");
    if (part == "..") {
      if (dirs.size() > 1) dirs.pop_back();
      cur = dirs.back();
      continue;
    }
    Result<InodeAttr> next = store.Lookup(cur.ino, part);
    if (next.status().code() == StatusCode::kNotFound)
      return Status::NotFound("no such file or directory in the store");
    if (!next.ok()) return next.status();
    if (next->kind == InodeKind::kSymlink && (!todo.empty() || follow_last)) {
      if (++links > 40) return Status::InvalidArgument("too many levels of symbolic links");
      Result<std::string> target = store.ReadLink(next->ino);
      if (!target.ok()) return target.status();
      if (target->starts_with("/")) {
        return Status::InvalidArgument("symlink " + part + " -> " + *target +
                                       " names a host path, not one in the store");
      }
      const std::vector<std::string> more = PathParts(*target);
      todo.insert(todo.begin(), more.begin(), more.end());
      continue;  // (from the symlink's directory)
    }
    cur = *next;
    if (cur.kind == InodeKind::kDirectory) dirs.push_back(cur);
  }
  if (dir_wanted && cur.kind != InodeKind::kDirectory) return Status::NotFound("not a directory");
  return cur;
}

// Store directory `path`, creating missing directories (mode 0755, now) like mkdir -p.
Result<InodeAttr> MakeStorePath(Store& store, const std::string& path) {
  const std::vector<std::string> parts = PathParts(path);
  // Every component is checked before any is made: a bad one must not leave the others behind.
  for (const std::string& part : parts) {
    if (part == ".." || part.size() > 255) {
      return Status::InvalidArgument(path + ": invalid name '" + part + "' in a store path");
    }
  }
  Result<InodeAttr> cur = store.GetAttr(kRootInode);
  std::string walked;
  for (const std::string& part : parts) {
    if (!cur.ok() || cur->kind != InodeKind::kDirectory) break;  // reported below
    walked += "/" + part;
    Result<InodeAttr> next = store.Lookup(cur->ino, part);
    // As mkdir -p, through symlinks to directories (a dangling one is no directory, below).
    if (next.ok() && next->kind == InodeKind::kSymlink) {
      next = ResolveStorePath(store, walked, true);
      if (!next.ok() && next.status().code() == StatusCode::kNotFound)
        return Status::InvalidArgument(path + ": " + walked +
                                       " links to no directory in the store");
    }
    if (!next.ok() && next.status().code() == StatusCode::kNotFound) {
      NewAttr attr;
      attr.mode = 0755;
      attr.uid = ::getuid();
      attr.gid = ::getgid();
      attr.atime_ns = attr.mtime_ns = attr.ctime_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count();
      next = store.Mkdir(cur->ino, part, attr);
    }
    cur = std::move(next);
  }
  if (cur.ok() && cur->kind != InodeKind::kDirectory) {
    return Status::InvalidArgument(path + ": not a directory in the store");
  }
  return cur;
}

}  // namespace

int Init(const std::string& store_dir) {
  Status st = Store::Init(store_dir);
  return st.ok() ? 0 : Fail(st);
}

int Import(const std::string& store_dir, const std::vector<std::string>& sources,
           const std::string& to, unsigned threads, bool quiet) {
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, true, threads);
  if (!store.ok()) return Fail(store.status());
  Result<InodeAttr> parent = MakeStorePath(**store, to);
  if (!parent.ok()) return Fail(parent.status());

  const bool tty = ::isatty(STDERR_FILENO) != 0 && !quiet;
  const auto start = std::chrono::steady_clock::now();
  auto last_print = start;
  ImportOptions opts;
  opts.store_dir = store_dir;
  opts.skipped = [](const std::string& path, const std::string& why) {
    std::fprintf(stderr, "\rzipnnfs: %s: %s\n", path.c_str(), why.c_str());
  };
  // As cp -a: what cannot be read is told and left out, the rest imported, and the exit code 1.
  opts.failed = [tty](const std::string& path, const Status& why) {
    std::fprintf(stderr, "%szipnnfs: %s: %s\n", tty ? "\r\033[K" : "", path.c_str(),
                 why.message().c_str());
  };
  if (tty) {
    opts.progress = [&](const std::string& path, const TreeSummary& t) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_print < std::chrono::milliseconds(100)) return;
      last_print = now;
      const double secs = std::chrono::duration<double>(now - start).count();
      std::fprintf(stderr, "\r\033[K%8.1f MB  %7.1f MB/s  ratio %5.3f  %s", Mb(t.raw_bytes),
                   Mb(t.raw_bytes) / secs, Ratio(t.raw_bytes, t.new_frame_bytes),
                   BaseName(path).c_str());
    };
  }
  TreeSummary total;
  int rc = 0;
  std::vector<ImportSource> list;
  for (const std::string& src : sources) list.push_back({src, ImportName(src)});
  if (Status st = ImportTrees(**store, list, parent->ino, opts, total); !st.ok()) {
    if (tty) std::fputs("\r\033[K", stderr);
    rc = Fail(st);
  }
  if (tty) std::fputs("\r\033[K", stderr);
  // Special files too: cp -a would have copied them, so the copy is not whole.
  if (rc == 0 && total.failed + total.skipped != 0) {
    std::fprintf(stderr, "zipnnfs: %llu entries could not be imported (see above)\n",
                 static_cast<unsigned long long>(total.failed + total.skipped));
    rc = kExitError;
  }
  if (!quiet) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(
        stderr,
        "imported %llu files, %llu directories, %llu symlinks (%llu skipped, %llu failed): "
        "%.1f MB "
        "-> %.1f MB of frames (ratio %.3f), %.1f MB new after dedup; %.2f s, %.1f MB/s\n",
        static_cast<unsigned long long>(total.files),
        static_cast<unsigned long long>(total.directories),
        static_cast<unsigned long long>(total.symlinks),
        static_cast<unsigned long long>(total.skipped),
        static_cast<unsigned long long>(total.failed), Mb(total.raw_bytes), Mb(total.frame_bytes),
        Ratio(total.raw_bytes, total.frame_bytes), Mb(total.new_frame_bytes), secs,
        secs > 0 ? Mb(total.raw_bytes) / secs : 0.0);
  }
  return rc;
}

int Export(const std::string& store_dir, const std::string& dest, const std::string& path) {
  // (As import leaves the store out of a copy: an export into it wrote over its own files.)
  if (PathIsWithin(dest, store_dir)) {
    return Fail(Status::InvalidArgument(dest + ": inside the store " + store_dir));
  }
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, false, 1);
  if (!store.ok()) return Fail(store.status());
  Result<InodeAttr> top = ResolveStorePath(**store, path, false);
  if (!top.ok()) return Fail(WithPath(path, top.status()));
  TreeSummary summary;
  // As cp -a: what cannot be exported is told and left out, the rest exported, and the exit code 1.
  ExportOptions opts;
  opts.failed = [](const Status& why) {
    std::fprintf(stderr, "zipnnfs: %s\n", why.message().c_str());
  };
  struct stat st;
  const bool dest_is_dir = ::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  Status result;
  if (top->ino == kRootInode && dest_is_dir) {
    // cp -a STORE/. DEST: the root's entries go into DEST. Unlike cp, DEST keeps its own mode,
    // owner and times: the root's may be what init gave it, and DEST a home directory or /. (A
    // new DEST is made with the root's.)
    result = ExportTreeEntries(**store, kRootInode, dest, summary, opts);
  } else {
    const std::string target =
        dest_is_dir ? dest + "/" + BaseName(path.empty() ? std::string("/") : path) : dest;
    result = ExportTree(**store, top->ino, target, summary, opts);
  }
  if (!result.ok()) return Fail(result);
  if (summary.failed != 0) {
    std::fprintf(stderr, "zipnnfs: %llu entries could not be exported (see above)\n",
                 static_cast<unsigned long long>(summary.failed));
    return kExitError;
  }
  return 0;
}

int Cat(const std::string& store_dir, const std::string& path, uint64_t offset,
        std::optional<uint64_t> length) {
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, false, 1);
  if (!store.ok()) return Fail(store.status());
  Result<InodeAttr> file = ResolveStorePath(**store, path, true);
  if (!file.ok()) return Fail(WithPath(path, file.status()));
  if (file->kind != InodeKind::kFile) return Fail(Status::InvalidArgument(path + ": not a file"));
  uint64_t end = file->size;
  if (offset > end) {  // (as zipnn cat)
    return Fail(Status::InvalidArgument(path + ": offset " + std::to_string(offset) +
                                        " is past the end (" + std::to_string(end) + " bytes)"));
  }
  if (length && *length < end - offset) end = offset + *length;
  Status st = WriteFileRange(**store, file->ino, offset, end, STDOUT_FILENO, path);
  return st.ok() ? 0 : Fail(st);
}

namespace {

// Every regular file at or below `ino`, with its store path. A directory met twice (a cycle or a
// hard link, which only a damaged index has) is an error, not an endless descent.
Status CollectFiles(Store& store, uint64_t ino, const std::string& path,
                    std::vector<std::pair<std::string, uint64_t>>& out,
                    std::unordered_set<uint64_t>& dirs) {
  Result<InodeAttr> a = store.GetAttr(ino);
  if (!a.ok()) return a.status();
  if (a->kind == InodeKind::kFile) out.emplace_back(path.empty() ? "/" : path, ino);
  if (a->kind != InodeKind::kDirectory) return Status::Ok();
  if (!dirs.insert(ino).second) {
    return Status::Corrupt((path.empty() ? "/" : path) + ": directory inode " +
                           std::to_string(ino) + " is in the tree twice (damaged index)");
  }
  return ForEachDirEntry(store, ino, [&](const DirEntry& e) {
    return CollectFiles(store, e.ino, path + "/" + e.name, out, dirs);
  });
}
Status CollectFiles(Store& store, uint64_t ino, const std::string& path,
                    std::vector<std::pair<std::string, uint64_t>>& out) {
  std::unordered_set<uint64_t> dirs;
  return CollectFiles(store, ino, path, out, dirs);
}

}  // namespace

int Stats(const std::string& store_dir, std::vector<std::string> paths, bool json) {
  // A mount point rather than a store: the live figures of its daemon.
  std::error_code ec;
  if (!std::filesystem::exists(store_dir + "/FORMAT", ec)) {
    if (ec.value() == ENOTCONN) {
      return Fail(Status::Io(store_dir + ": a mount point whose daemon is gone (unmount it: " +
                             "fusermount3 -u " + store_dir + ")"));
    }
    Result<std::string> live = zipnn::fs::ReadMountStats(store_dir);
    if (live.ok()) {
      // (Its daemon's figures, JSON always: there is nothing per file to give.)
      if (!paths.empty()) {
        return Fail(Status::InvalidArgument(store_dir +
                                            ": a mount point: its live figures have no per-path "
                                            "part (give the store's directory for PATHs)"));
      }
      std::fputs(live->c_str(), stdout);
      return 0;
    }
  }
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, false, 1);
  if (!store.ok()) return Fail(store.status());
  if (paths.empty()) paths.push_back("/");
  std::vector<std::pair<std::string, uint64_t>> files;
  int rc = 0;  // as du: a path that is not there is told, the others are counted, and the exit is 1
  for (const std::string& p : paths) {
    Result<InodeAttr> a = ResolveStorePath(**store, p, false);
    if (!a.ok()) {
      rc = Fail(WithPath(p, a.status()));
      continue;
    }
    std::string norm = p;
    while (!norm.empty() && norm.back() == '/') norm.pop_back();
    if (!norm.empty() && norm.front() != '/') norm = "/" + norm;
    Status st = CollectFiles(**store, a->ino, norm, files);
    if (!st.ok()) return Fail(st);
  }
  Result<StoreUsage> usage = (*store)->GetStoreUsage();
  if (!usage.ok()) return Fail(usage.status());

  // JSON goes out file by file: a document built whole took 2.9 KB per file (1.2 GB for 400k).
  auto dump = [](const nlohmann::json& j, int indent) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  // Ends the document after the files, with the members of `rest` ("{\n  ...": its brace dropped).
  auto close_json = [&](const nlohmann::json& rest) {
    std::printf("\n  ],%s\n", dump(rest, 2).c_str() + 1);
  };
  uint64_t total_size = 0, total_stored = 0;
  std::unordered_set<uint64_t> counted;
  bool first = true;
  if (json) std::printf("{\n  \"files\": [");
  if (!json) std::printf("%14s %14s %7s  %-24s %s\n", "size", "stored", "ratio", "dtypes", "path");
  for (const auto& [path, ino] : files) {
    Result<FileUsage> u = (*store)->GetFileUsage(ino);
    if (!u.ok()) {
      // The files so far are out: close the document, with the error, so it still parses.
      const Status err = WithPath(path, u.status());
      if (json) close_json({{"error", err.message()}});
      return Fail(err);
    }
    if (counted.insert(ino).second) {  // (a file of several names counts once, as du counts it)
      total_size += u->size;
      total_stored += u->frame_bytes;
    }
    nlohmann::json methods = nlohmann::json::object(), dtypes = nlohmann::json::object();
    std::string dtype_list;
    for (int m = 0; m < kNumMethods; ++m) {
      if (u->raw_by_method[m] != 0) {
        methods[std::string(MethodName(static_cast<Method>(m)))] = u->raw_by_method[m];
      }
    }
    for (int d = 0; d < kNumDTypes; ++d) {
      if (u->raw_by_dtype[d] == 0) continue;
      const std::string name(DTypeName(static_cast<DType>(d)));
      dtypes[name] = u->raw_by_dtype[d];
      dtype_list += (dtype_list.empty() ? "" : ",") + name;
    }
    if (json) {
      nlohmann::json jf = {{"size", u->size},          {"stored", u->frame_bytes},
                           {"chunks", u->chunks},      {"ratio", Ratio(u->size, u->frame_bytes)},
                           {"raw_by_method", methods}, {"raw_by_dtype", dtypes}};
      PutJsonPath(jf, path);
      std::printf("%s\n    %s", std::exchange(first, false) ? "" : ",", dump(jf, -1).c_str());
    } else {
      std::printf("%14llu %14llu %7.3f  %-24s %s\n", static_cast<unsigned long long>(u->size),
                  static_cast<unsigned long long>(u->frame_bytes), Ratio(u->size, u->frame_bytes),
                  dtype_list.c_str(), path.c_str());
    }
  }
  // Dedup savings, store-wide: what the files would take if no chunk were shared (each chunk's
  // frame once per reference), minus what the distinct chunks take.
  const uint64_t dedup_saved = usage->referenced_frame_bytes -
                               std::min(usage->referenced_frame_bytes, usage->chunk_frame_bytes);
  if (json) {
    nlohmann::json out = {{"total",
                           {{"size", total_size},
                            {"stored", total_stored},
                            {"ratio", Ratio(total_size, total_stored)}}},
                          {"store",
                           {{"files", usage->files},
                            {"directories", usage->directories},
                            {"symlinks", usage->symlinks},
                            {"logical_bytes", usage->logical_bytes},
                            {"chunks", usage->chunks},
                            {"chunk_frame_bytes", usage->chunk_frame_bytes},
                            {"unreferenced_frame_bytes", usage->unreferenced_frame_bytes},
                            {"pack_bytes", usage->pack_bytes},
                            {"dedup_saved_bytes", dedup_saved},
                            {"ratio", Ratio(usage->logical_bytes, usage->pack_bytes)}}}};
    close_json(out);
  } else {
    std::printf("%14llu %14llu %7.3f  %-24s total of %zu files\n",
                static_cast<unsigned long long>(total_size),
                static_cast<unsigned long long>(total_stored), Ratio(total_size, total_stored), "",
                counted.size());
    std::printf(
        "store: %llu files, %.1f MB logical, %.1f MB in %llu distinct chunks, %.1f MB saved by "
        "dedup, %.1f MB unreferenced (gc), packs %.1f MB, ratio %.3f\n",
        static_cast<unsigned long long>(usage->files), Mb(usage->logical_bytes),
        Mb(usage->chunk_frame_bytes), static_cast<unsigned long long>(usage->chunks),
        Mb(dedup_saved), Mb(usage->unreferenced_frame_bytes), Mb(usage->pack_bytes),
        Ratio(usage->logical_bytes, usage->pack_bytes));
  }
  return rc;
}

namespace {

// Every path of inode `ino` (a file of several names is named by all of them), or "".
std::string NamesOf(uint64_t ino, const std::vector<std::pair<std::string, uint64_t>>& files) {
  std::string names;
  for (const auto& f : files) {
    if (f.second == ino) names += (names.empty() ? "" : ", ") + f.first;
  }
  return names;
}

void PrintProblems(const CheckReport& report,
                   const std::vector<std::pair<std::string, uint64_t>>& files) {
  for (const CheckProblem& p : report.problems) {
    if (p.ino == 0) {
      std::printf("store: %s\n", p.what.c_str());
      continue;
    }
    std::string name = NamesOf(p.ino, files);
    if (name.empty()) name = "inode " + std::to_string(p.ino);
    if (p.begin == 0 && p.end == 0) {  // of the inode, not of a byte range (was "bytes [0, 0)")
      std::printf("%s: %s\n", name.c_str(), p.what.c_str());
      continue;
    }
    std::printf("%s: bytes [%llu, %llu): %s\n", name.c_str(),
                static_cast<unsigned long long>(p.begin), static_cast<unsigned long long>(p.end),
                p.what.c_str());
  }
}

}  // namespace

// Exit code 0: clean (with --repair: clean after the repair, which lists what it removed);
// 1: damaged (each problem on stdout) or the check could not run.
int Fsck(const std::string& store_dir, bool quick, bool repair) {
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, repair, 1);
  if (!store.ok()) return Fail(store.status());
  // Files are named by a path when one leads to them (found before a repair removes them).
  std::vector<std::pair<std::string, uint64_t>> files;
  (void)CollectFiles(**store, kRootInode, "", files);
  CheckReport final_report;
  if (repair) {
    Result<RepairReport> r = (*store)->Repair(!quick);
    if (!r.ok()) return Fail(r.status());
    PrintProblems(r->found, files);
    for (const RepairAction& a : r->actions) {
      const std::string names = a.ino != 0 ? NamesOf(a.ino, files) : "";
      std::printf("repair: %s%s\n", a.what.c_str(),
                  names.empty() ? "" : (" [" + names + "]").c_str());
    }
    PrintProblems(r->after, files);
    final_report = std::move(r->after);
  } else {
    Result<CheckReport> report = (*store)->Check(!quick);
    if (!report.ok()) return Fail(report.status());
    PrintProblems(*report, files);
    final_report = std::move(*report);
  }
  std::fprintf(stderr, "%llu inodes, %llu chunks, %llu frames verified: %s\n",
               static_cast<unsigned long long>(final_report.inodes),
               static_cast<unsigned long long>(final_report.chunks),
               static_cast<unsigned long long>(final_report.frames_verified),
               final_report.clean() ? (repair ? "clean after repair" : "clean") : "DAMAGED");
  return final_report.clean() ? 0 : kExitError;
}

int Gc(const std::string& store_dir) {
  Result<std::unique_ptr<Store>> store = OpenStore(store_dir, true, 1);
  if (!store.ok()) return Fail(store.status());
  Result<GcReport> r = (*store)->Gc(0.5);
  if (!r.ok()) return Fail(r.status());
  std::fprintf(stderr,
               "gc: %llu unreferenced chunks dropped, %llu frames (%.1f MB) moved, %llu packs "
               "removed, %.1f MB reclaimed\n",
               static_cast<unsigned long long>(r->chunks_dropped),
               static_cast<unsigned long long>(r->frames_moved), Mb(r->bytes_moved),
               static_cast<unsigned long long>(r->packs_removed), Mb(r->bytes_reclaimed));
  return 0;
}

}  // namespace zipnn::tool::store
