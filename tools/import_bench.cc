// zipnnfs bench-import: store import speed against the codec's own all-thread compress speed on
// the same files, measured in the same run (rounds alternate, so load from other processes hits
// both alike), and against writing the frames durably to the same disk (an import can beat
// neither); the store's size against the sum of its frames.
#include "tools/import_bench.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "codec/codec.h"
#include "codec/container.h"
#include "index/index.h"
#include "index/tree.h"
#include "tools/synth_model.h"

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// CPU seconds (user + system) this process has used so far.
double CpuSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

// Every file below the sources, loaded and planned as the store plans them, back to back.
struct Corpus {
  std::vector<uint8_t> data;
  std::vector<ChunkSpec> plan;      // offsets into `data`
  std::vector<size_t> file_starts;  // index in `plan` of each file's first chunk, and the end
  uint64_t files = 0;
};

Status LoadCorpus(const std::vector<std::string>& sources, Corpus& c) {
  std::vector<std::string> paths;
  for (const std::string& src : sources) {
    std::error_code ec;
    if (fs::is_regular_file(fs::symlink_status(src, ec))) paths.push_back(src);
    for (auto it = fs::recursive_directory_iterator(src, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && !it->is_symlink(ec)) paths.push_back(it->path().string());
    }
    if (ec) return Status::Io(src + ": " + ec.message());
  }
  for (const std::string& path : paths) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st;
    if (!fd.valid() || ::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, path);
    const uint64_t base = c.data.size(), size = static_cast<uint64_t>(st.st_size);
    c.data.resize(base + size);
    ZIPNN_RETURN_IF_ERROR(PreadFull(fd.get(), 0, {c.data.data() + base, size}));
    const ReadAtFn read_at = [&c, base](uint64_t off, std::span<uint8_t> out) {
      std::copy_n(c.data.data() + base + off, out.size(), out.data());
      return Status::Ok();
    };
    Result<std::vector<ChunkSpec>> plan = PlanChunks(read_at, size);
    if (!plan.ok()) return WithPath(path, plan.status());
    c.file_starts.push_back(c.plan.size());
    for (ChunkSpec& s : *plan) {
      s.offset += base;
      c.plan.push_back(std::move(s));
    }
    ++c.files;
  }
  c.file_starts.push_back(c.plan.size());
  return Status::Ok();
}

// Directory size: apparent bytes and allocated bytes of every file below `dir`.
void DirSize(const std::string& dir, uint64_t& apparent, uint64_t& allocated) {
  apparent = allocated = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st;
    if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      apparent += static_cast<uint64_t>(st.st_size);
      allocated += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
}

// Seconds to write `frames` to a new file under `dir` and fdatasync it: what storing the frames
// durably costs on this disk, without any store.
Result<double> DurableWriteSeconds(const std::vector<std::vector<uint8_t>>& frames,
                                   const std::string& dir) {
  const std::string path = dir + "/frames.tmp";
  const auto start = std::chrono::steady_clock::now();
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno(errno, path);
  std::vector<uint8_t> buf;
  for (size_t i = 0; i <= frames.size(); ++i) {  // in 8 MB writes, as the pack writer does
    if (i == frames.size() || buf.size() + frames[i].size() > (8u << 20)) {
      ZIPNN_RETURN_IF_ERROR(WriteFull(fd.get(), buf));
      buf.clear();
    }
    if (i < frames.size()) buf.insert(buf.end(), frames[i].begin(), frames[i].end());
  }
  if (::fdatasync(fd.get()) != 0) return Status::FromErrno(errno, path);
  const double seconds = Seconds(start);
  ::unlink(path.c_str());
  return seconds;
}

struct ImportRun {
  double seconds = 0;
  index::StoreUsage usage;
  uint64_t apparent = 0, allocated = 0, index_bytes = 0;
};

Result<ImportRun> ImportOnce(const std::vector<std::string>& sources, const std::string& store_dir,
                             unsigned threads) {
  ZIPNN_RETURN_IF_ERROR(index::Store::Init(store_dir));
  ImportRun run;
  const auto start = std::chrono::steady_clock::now();
  {
    index::StoreOptions opts;
    opts.writable = true;
    opts.threads = threads;
    Result<std::unique_ptr<index::Store>> store = index::Store::Open(store_dir, opts);
    if (!store.ok()) return store.status();
    index::TreeSummary summary;
    for (const std::string& src : sources) {
      ZIPNN_RETURN_IF_ERROR(index::ImportTree(**store, src, index::kRootInode,
                                              fs::path(src).lexically_normal().filename().string(),
                                              {}, summary));
    }
    run.seconds = Seconds(start);
    Result<index::StoreUsage> usage = (*store)->GetStoreUsage();
    if (!usage.ok()) return usage.status();
    run.usage = *usage;
  }
  DirSize(store_dir, run.apparent, run.allocated);
  uint64_t unused;
  DirSize(store_dir + "/index", run.index_bytes, unused);
  return run;
}

}  // namespace

Status BenchImport(const BenchImportOptions& opts) {
  std::vector<std::string> sources = opts.sources;
  if (sources.empty()) sources.push_back(opts.default_corpus);
  std::string tmpl = (fs::path(opts.scratch) / "zipnnfs-bench-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return Status::FromErrno(errno, opts.scratch);
  const std::string scratch = tmpl;
  if (opts.synthetic_mb > 0) {  // models of 200 MB: two layers of 4096 x 4096 and 8192 x 4096
    sources = {scratch + "/synthetic"};
    fs::create_directories(sources[0]);
    SynthModelOptions so;
    so.layers = 2;
    so.dim = 4096;
    for (uint64_t mb = 0; mb < opts.synthetic_mb; mb += 200, ++so.seed) {
      ZIPNN_RETURN_IF_ERROR(WriteSyntheticSafetensors(
          sources[0] + "/model-" + std::to_string(so.seed) + ".safetensors", so));
    }
  }
  Corpus corpus;
  ZIPNN_RETURN_IF_ERROR(LoadCorpus(sources, corpus));

  ParallelCodec codec(opts.threads);
  std::vector<std::vector<uint8_t>> frames;
  uint64_t frame_bytes = 0;
  std::vector<double> codec_s, per_file_s, import_s, disk_s;
  double codec_cpu = 0, import_cpu = 0;
  ImportRun last;
  Status st;
  for (int round = 0; round < opts.rounds && st.ok(); ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    double cpu0 = CpuSeconds();
    st = codec.EncodeAll(corpus.data, 0, corpus.plan, frames);
    codec_s.push_back(Seconds(t0));
    frame_bytes = 0;
    for (const auto& f : frames) frame_bytes += f.size();
    codec_cpu += CpuSeconds() - cpu0;
    Result<double> disk = DurableWriteSeconds(frames, scratch);
    if (!disk.ok()) {
      st = disk.status();
      break;
    }
    disk_s.push_back(*disk);
    // As `zipnn bench` and `zipnn compress` do it: all threads on one file at a time.
    const auto t1 = std::chrono::steady_clock::now();
    for (size_t f = 0; st.ok() && f + 1 < corpus.file_starts.size(); ++f) {
      const std::span<const ChunkSpec> plan(corpus.plan.data() + corpus.file_starts[f],
                                            corpus.file_starts[f + 1] - corpus.file_starts[f]);
      if (!plan.empty()) st = codec.EncodeAll(corpus.data, 0, plan, frames);
    }
    per_file_s.push_back(Seconds(t1));
    if (!st.ok()) break;
    const std::string store_dir = scratch + "/store" + std::to_string(round);
    cpu0 = CpuSeconds();
    Result<ImportRun> run = ImportOnce(sources, store_dir, opts.threads);
    import_cpu += CpuSeconds() - cpu0;
    if (!run.ok()) {
      st = run.status();
      break;
    }
    import_s.push_back(run->seconds);
    last = *run;
    fs::remove_all(store_dir);
  }
  std::error_code ec;
  fs::remove_all(scratch, ec);
  ZIPNN_RETURN_IF_ERROR(st);

  const double mb = static_cast<double>(corpus.data.size()) / 1e6;
  auto best = [](std::vector<double> v) { return *std::min_element(v.begin(), v.end()); };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf(
      "# zipnnfs bench-import\n\n%llu files, %.1f MB, %zu chunks; %u threads; %d rounds\n\n",
      static_cast<unsigned long long>(corpus.files), mb, corpus.plan.size(), codec.threads(),
      opts.rounds);
  std::printf("| | best MB/s | median MB/s |\n|---|--:|--:|\n");
  std::printf("| codec compress, all threads (in memory) | %.1f | %.1f |\n", mb / best(codec_s),
              mb / median(codec_s));
  std::printf("| codec compress, all threads, file by file (as zipnn bench) | %.1f | %.1f |\n",
              mb / best(per_file_s), mb / median(per_file_s));
  std::printf("| durable write of the frames alone (write, fdatasync) | %.1f | %.1f |\n",
              mb / best(disk_s), mb / median(disk_s));
  std::printf("| zipnnfs import (files, fsync, commit) | %.1f | %.1f |\n", mb / best(import_s),
              mb / median(import_s));
  std::printf("| import / codec (all chunks at once) | %.2f | %.2f |\n",
              best(codec_s) / best(import_s), median(codec_s) / median(import_s));
  std::printf("| import / codec (file by file) | %.2f | %.2f |\n",
              best(per_file_s) / best(import_s), median(per_file_s) / median(import_s));
  auto bound = [](double codec, double disk) { return std::max(codec, disk); };
  std::printf("| import / slower of codec and disk (all at once) | %.2f | %.2f |\n\n",
              bound(best(codec_s), best(disk_s)) / best(import_s),
              bound(median(codec_s), median(disk_s)) / median(import_s));
  std::printf(
      "CPU seconds per round: codec %.3f, import %.3f (includes store init and size scan)\n\n",
      codec_cpu / opts.rounds, import_cpu / opts.rounds);
  const double frames_mb = static_cast<double>(frame_bytes) / 1e6;
  std::printf(
      "sum of frames (codec): %.2f MB; store: packs %.2f MB (%.4f x frames), chunk frames "
      "%.2f MB, index %.2f MB; whole store %.2f MB apparent, %.2f MB allocated (%.4f x "
      "frames)\n",
      frames_mb, static_cast<double>(last.usage.pack_bytes) / 1e6,
      static_cast<double>(last.usage.pack_bytes) / static_cast<double>(frame_bytes),
      static_cast<double>(last.usage.chunk_frame_bytes) / 1e6,
      static_cast<double>(last.index_bytes) / 1e6, static_cast<double>(last.apparent) / 1e6,
      static_cast<double>(last.allocated) / 1e6,
      static_cast<double>(last.allocated) / static_cast<double>(frame_bytes));
  return Status::Ok();
}

}  // namespace zipnn::tool
