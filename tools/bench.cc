// zipnn bench: compression ratio and speed of the codec against zstd, per dtype, on real weights.
#include <stdlib.h>
#include <sys/stat.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/container.h"
#include "tools/commands.h"
#include "tools/file_io.h"
#include "tools/synth_model.h"

#ifndef ZIPNN_SOURCE_DIR
#define ZIPNN_SOURCE_DIR "."
#endif

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;

struct BenchFile {
  std::string path;
  std::vector<uint8_t> data;
  std::vector<ChunkSpec> plan;
  std::vector<ChunkSpec> tensor_plan;  // its typed chunks: the tensors, without the header
  DType dtype = DType::kBytes;         // the dtype holding most of the file's bytes
  // Filled while its group is measured, freed after.
  std::vector<std::vector<uint8_t>> frames;
  std::vector<uint8_t> decoded;
};

// One speed: seconds of the best run.
struct Speed {
  double compress = 0, decompress = 0;
};

struct GroupResult {
  DType dtype = DType::kBytes;
  size_t files = 0;
  uint64_t bytes = 0;
  uint64_t zipnn_size = 0;     // frames plus container overhead
  double entropy_bytes = 0;    // order-0 bound of the coded streams
  uint64_t zstd_size[2] = {};  // levels 1 and 3
  uint64_t tensor_bytes = 0;   // in typed chunks
  Speed zipnn_one, zipnn_all, zstd[2];
  Speed zipnn_tensors;  // 1 thread, typed chunks only
};

constexpr int kZstdLevels[2] = {1, 3};

// Runs `run` until at least `min_seconds` have passed (and twice at least); returns the best time.
double BestSeconds(double min_seconds, const std::function<Status()>& run, Status* error) {
  double best = std::numeric_limits<double>::infinity(), total = 0;
  for (int reps = 0; reps < 2 || total < min_seconds; ++reps) {
    const auto t0 = std::chrono::steady_clock::now();
    Status s = run();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!s.ok()) {
      *error = s;
      return best;
    }
    best = std::min(best, dt);
    total += dt;
  }
  return best;
}

Status CheckSame(const BenchFile& f, std::span<const uint8_t> decoded, const char* what) {
  if (decoded.size() == f.data.size() &&
      std::memcmp(decoded.data(), f.data.data(), decoded.size()) == 0) {
    return Status::Ok();
  }
  return Status::Corrupt(f.path + ": " + what + " round trip differs from the original");
}

Result<BenchFile> LoadFile(const std::string& path) {
  Result<InputFile> in = OpenInput(path);
  if (!in.ok()) return in.status();
  BenchFile f;
  f.path = path;
  f.data.resize(in->size);
  ZIPNN_RETURN_IF_ERROR(WithPath(path, PreadFull(in->fd.get(), 0, f.data)));
  const std::vector<uint8_t>& data = f.data;
  ReadAtFn read_at = [&data](uint64_t offset, std::span<uint8_t> out) {
    if (offset > data.size() || out.size() > data.size() - offset) {
      return Status::Io("read past the end");
    }
    std::memcpy(out.data(), data.data() + offset, out.size());
    return Status::Ok();
  };
  Result<std::vector<ChunkSpec>> plan = PlanChunks(read_at, data.size());
  if (!plan.ok()) return WithPath(path, plan.status());
  f.plan = std::move(*plan);
  for (const ChunkSpec& c : f.plan)
    if (c.dtype != DType::kBytes) f.tensor_plan.push_back(c);
  std::array<uint64_t, kNumDTypes> bytes{};
  for (const ChunkSpec& c : f.plan) bytes[static_cast<size_t>(c.dtype)] += c.size;
  f.dtype = static_cast<DType>(std::max_element(bytes.begin(), bytes.end()) - bytes.begin());
  return f;
}

// `tensors`: the typed chunks only (f->tensor_plan), as the reference figures count tensor bytes.
Status EncodeGroup(ParallelCodec& codec, std::vector<BenchFile*>& files, GroupResult* r,
                   bool tensors = false) {
  std::vector<EncodeStats> stats;
  for (BenchFile* f : files) {
    const std::vector<ChunkSpec>& plan = tensors ? f->tensor_plan : f->plan;
    ZIPNN_RETURN_IF_ERROR(
        WithPath(f->path, codec.EncodeAll(f->data, 0, plan, f->frames, r ? &stats : nullptr)));
    if (!r) continue;
    r->zipnn_size += ContainerOverhead(f->frames.size());
    for (const auto& frame : f->frames) r->zipnn_size += frame.size();
    for (const EncodeStats& s : stats) r->entropy_bytes += s.entropy_bits / 8.0;
  }
  return Status::Ok();
}

Status DecodeGroup(ParallelCodec& codec, std::vector<BenchFile*>& files, bool tensors = false) {
  std::vector<std::span<const uint8_t>> frames;
  std::vector<std::span<uint8_t>> outs;
  for (BenchFile* f : files) {
    f->decoded.resize(f->data.size());
    frames.assign(f->frames.begin(), f->frames.end());
    outs.clear();
    for (const ChunkSpec& c : tensors ? f->tensor_plan : f->plan)
      outs.push_back(std::span(f->decoded).subspan(c.offset, c.size));
    ZIPNN_RETURN_IF_ERROR(WithPath(f->path, codec.DecodeAll(frames, outs)));
  }
  return Status::Ok();
}

// Times compress and decompress of the group (best runs); `tensors`: of the typed chunks only.
Status TimeGroup(ParallelCodec& codec, std::vector<BenchFile*>& files, double min_seconds,
                 Speed& speed, bool tensors) {
  Status error;
  speed.compress = BestSeconds(
      min_seconds, [&] { return EncodeGroup(codec, files, nullptr, tensors); }, &error);
  ZIPNN_RETURN_IF_ERROR(error);
  speed.decompress = BestSeconds(
      min_seconds, [&] { return DecodeGroup(codec, files, tensors); }, &error);
  return error;
}

// Measures our codec with `codec`'s threads: ratio (once), compress and decompress speeds.
Status MeasureZipnn(ParallelCodec& codec, std::vector<BenchFile*>& files, double min_seconds,
                    GroupResult& r, Speed& speed, bool record_sizes) {
  if (record_sizes) ZIPNN_RETURN_IF_ERROR(EncodeGroup(codec, files, &r));
  ZIPNN_RETURN_IF_ERROR(TimeGroup(codec, files, min_seconds, speed, false));
  for (BenchFile* f : files) ZIPNN_RETURN_IF_ERROR(CheckSame(*f, f->decoded, "zipnn"));
  return Status::Ok();
}

// One thread on the tensors alone (the typed chunks), every decoded tensor byte checked.
Status MeasureTensors(ParallelCodec& one, std::vector<BenchFile*>& files, double min_seconds,
                      Speed& speed) {
  ZIPNN_RETURN_IF_ERROR(TimeGroup(one, files, min_seconds, speed, true));
  for (BenchFile* f : files) {
    for (const ChunkSpec& c : f->tensor_plan) {
      if (std::memcmp(f->decoded.data() + c.offset, f->data.data() + c.offset, c.size) != 0)
        return Status::Corrupt(f->path + ": tensor round trip differs from the original");
    }
  }
  return Status::Ok();
}

Status MeasureZstd(int level, std::vector<BenchFile*>& files, double min_seconds, uint64_t& size,
                   Speed& speed) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<std::vector<uint8_t>> compressed(files.size());
  auto compress = [&]() -> Status {
    for (size_t i = 0; i < files.size(); ++i) {
      const std::vector<uint8_t>& src = files[i]->data;
      compressed[i].resize(ZSTD_compressBound(src.size()));
      size_t n = ZSTD_compressCCtx(cctx, compressed[i].data(), compressed[i].size(), src.data(),
                                   src.size(), level);
      if (ZSTD_isError(n)) return Status::Io(std::string("zstd: ") + ZSTD_getErrorName(n));
      compressed[i].resize(n);
    }
    return Status::Ok();
  };
  auto decompress = [&]() -> Status {
    for (size_t i = 0; i < files.size(); ++i) {
      std::vector<uint8_t>& dst = files[i]->decoded;
      dst.resize(files[i]->data.size());
      size_t n = ZSTD_decompressDCtx(dctx, dst.data(), dst.size(), compressed[i].data(),
                                     compressed[i].size());
      if (ZSTD_isError(n) || n != dst.size()) return Status::Corrupt("zstd round trip failed");
    }
    return Status::Ok();
  };
  Status error;
  speed.compress = BestSeconds(min_seconds, compress, &error);
  if (error.ok()) speed.decompress = BestSeconds(min_seconds, decompress, &error);
  ZSTD_freeCCtx(cctx);
  ZSTD_freeDCtx(dctx);
  ZIPNN_RETURN_IF_ERROR(error);
  size = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    size += compressed[i].size();
    ZIPNN_RETURN_IF_ERROR(CheckSame(*files[i], files[i]->decoded, "zstd"));
  }
  return Status::Ok();
}

Result<std::vector<std::string>> FindSafetensors(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  // Symlinks are followed (a corpus may link its files in), each file and directory taken once:
  // a link back up the tree counted one file 41 times.
  std::set<std::pair<dev_t, ino_t>> seen;
  auto first_visit = [&seen](const fs::path& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && seen.insert({st.st_dev, st.st_ino}).second;
  };
  first_visit(dir);
  fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code entry_ec;  // (a dangling link is no error: it is no model either)
    if (it->is_directory(entry_ec)) {
      if (!first_visit(it->path())) it.disable_recursion_pending();
    } else if (it->path().extension() == ".safetensors" && it->is_regular_file(entry_ec) &&
               first_visit(it->path())) {
      found.push_back(it->path().string());
    }
  }
  if (ec) return Status::Io(dir + ": " + ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

// A temporary directory holding a synthetic model, removed on destruction.
class SynthModelDir {
 public:
  Status Create() {
    std::string tmpl = (fs::temp_directory_path(ec_) / "zipnn-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return Status::FromErrno(errno, tmpl);
    dir_ = tmpl;
    for (DType t : {DType::kBF16, DType::kF32}) {
      SynthModelOptions o;
      o.dtype = t;
      o.seed = static_cast<uint64_t>(t);
      std::string path = dir_ + "/synthetic-" + std::string(DTypeName(t)) + ".safetensors";
      ZIPNN_RETURN_IF_ERROR(WriteSyntheticSafetensors(path, o));
      files_.push_back(path);
    }
    return Status::Ok();
  }
  ~SynthModelDir() {
    if (!dir_.empty()) fs::remove_all(dir_, ec_);
  }
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::error_code ec_;
  std::string dir_;
  std::vector<std::string> files_;
};

double Ratio(double part, uint64_t whole) { return whole ? part / static_cast<double>(whole) : 0; }
double MBps(uint64_t bytes, double seconds) { return seconds > 0 ? bytes / 1e6 / seconds : 0; }

void PrintTables(const std::vector<GroupResult>& groups, unsigned all_threads) {
  GroupResult total;
  for (const GroupResult& g : groups) {
    total.files += g.files;
    total.bytes += g.bytes;
    total.zipnn_size += g.zipnn_size;
    total.entropy_bytes += g.entropy_bytes;
    total.tensor_bytes += g.tensor_bytes;
    total.zipnn_tensors.compress += g.zipnn_tensors.compress;
    total.zipnn_tensors.decompress += g.zipnn_tensors.decompress;
    for (int l = 0; l < 2; ++l) {
      total.zstd_size[l] += g.zstd_size[l];
      total.zstd[l].compress += g.zstd[l].compress;
      total.zstd[l].decompress += g.zstd[l].decompress;
    }
    for (auto [t, s] :
         {std::pair{&total.zipnn_one, &g.zipnn_one}, {&total.zipnn_all, &g.zipnn_all}}) {
      t->compress += s->compress;
      t->decompress += s->decompress;
    }
  }
  std::printf("\n## Size: compressed / original (lower is better)\n\n");
  std::printf("| dtype | files | MB | zipnn | entropy bound | zstd -1 | zstd -3 |\n");
  std::printf("|---|--:|--:|--:|--:|--:|--:|\n");
  auto size_row = [](const char* name, const GroupResult& g) {
    std::printf("| %s | %zu | %.1f | **%.3f** | %.3f | %.3f | %.3f |\n", name, g.files,
                g.bytes / 1e6, Ratio(g.zipnn_size, g.bytes), Ratio(g.entropy_bytes, g.bytes),
                Ratio(g.zstd_size[0], g.bytes), Ratio(g.zstd_size[1], g.bytes));
  };
  for (const GroupResult& g : groups) size_row(std::string(DTypeName(g.dtype)).c_str(), g);
  if (groups.size() > 1) size_row("all", total);

  std::printf("\n## Speed: MB/s of original bytes, compress / decompress (higher is better)\n\n");
  std::printf("| dtype | zipnn 1 thread | zipnn %u threads | zstd -1 | zstd -3 |\n", all_threads);
  std::printf("|---|--:|--:|--:|--:|\n");
  auto speed_row = [](const char* name, const GroupResult& g) {
    auto cell = [&](const Speed& s) {
      std::printf(" %.0f / %.0f |", MBps(g.bytes, s.compress), MBps(g.bytes, s.decompress));
    };
    std::printf("| %s |", name);
    cell(g.zipnn_one);
    cell(g.zipnn_all);
    cell(g.zstd[0]);
    cell(g.zstd[1]);
    std::printf("\n");
  };
  for (const GroupResult& g : groups) speed_row(std::string(DTypeName(g.dtype)).c_str(), g);
  if (groups.size() > 1) speed_row("all", total);

  // As ZipNN's reference figures are measured: tensor bytes, without the files' headers (which
  // go through zstd, at a few hundred MB/s).
  std::printf("\n## Speed of the tensors alone (headers left out), 1 thread, MB/s\n\n");
  std::printf("| dtype | tensor MB | zipnn compress / decompress |\n|---|--:|--:|\n");
  auto tensor_row = [](const char* name, const GroupResult& g) {
    std::printf("| %s | %.3f | %.0f / %.0f |\n", name, g.tensor_bytes / 1e6,
                MBps(g.tensor_bytes, g.zipnn_tensors.compress),
                MBps(g.tensor_bytes, g.zipnn_tensors.decompress));
  };
  for (const GroupResult& g : groups) tensor_row(std::string(DTypeName(g.dtype)).c_str(), g);
  if (groups.size() > 1) tensor_row("all", total);
}

}  // namespace

Status Bench(const BenchOptions& opts) {
  std::vector<std::string> paths = opts.files;
  std::string source;
  SynthModelDir synth;
  if (paths.empty()) {
    const char* env = ::getenv("ZIPNN_CORPUS");
    const std::string corpus = env && *env ? env : ZIPNN_SOURCE_DIR "/../shared/corpus";
    std::error_code ec;
    if (fs::is_directory(corpus, ec)) {
      Result<std::vector<std::string>> found = FindSafetensors(corpus);
      if (!found.ok()) return found.status();
      paths = std::move(*found);
      source = "real weights: " + fs::weakly_canonical(corpus, ec).string();
    } else if (env && *env) {
      return Status::NotFound(corpus + ": ZIPNN_CORPUS is not a directory");
    }
    if (paths.empty()) {
      std::fprintf(stderr,
                   "zipnn bench: no .safetensors corpus at %s; benchmarking a synthetic model\n",
                   corpus.c_str());
      ZIPNN_RETURN_IF_ERROR(synth.Create());
      paths = synth.files();
      source = "SYNTHETIC model (Gaussian weights, not real: ratios are only indicative)";
    }
  } else {
    source = "files given";
  }

  std::vector<BenchFile> files;
  for (const std::string& p : paths) {
    Result<BenchFile> f = LoadFile(p);
    if (!f.ok()) return f.status();
    files.push_back(std::move(*f));
  }
  ParallelCodec one(1), all(opts.threads);
  std::printf(
      "# zipnn bench\n\n%zu files, %s. zstd %s (libzstd, in memory, 1 thread). Speeds: "
      "files in memory, best of repeated runs of >= %.2g s. Every round trip is checked.\n",
      files.size(), source.c_str(), ZSTD_versionString(), opts.min_seconds);

  std::vector<GroupResult> groups;
  for (int t = 0; t < kNumDTypes; ++t) {
    std::vector<BenchFile*> members;
    for (BenchFile& f : files) {
      if (static_cast<int>(f.dtype) == t) members.push_back(&f);
    }
    if (members.empty()) continue;
    GroupResult r;
    r.dtype = static_cast<DType>(t);
    r.files = members.size();
    for (BenchFile* f : members) {
      r.bytes += f->data.size();
      for (const ChunkSpec& c : f->tensor_plan) r.tensor_bytes += c.size;
    }
    std::fprintf(stderr, "zipnn bench: %s: %zu files, %.1f MB...\n",
                 std::string(DTypeName(r.dtype)).c_str(), r.files, r.bytes / 1e6);
    ZIPNN_RETURN_IF_ERROR(MeasureZipnn(one, members, opts.min_seconds, r, r.zipnn_one, true));
    ZIPNN_RETURN_IF_ERROR(MeasureZipnn(all, members, opts.min_seconds, r, r.zipnn_all, false));
    ZIPNN_RETURN_IF_ERROR(MeasureTensors(one, members, opts.min_seconds, r.zipnn_tensors));
    for (int l = 0; l < 2; ++l) {
      ZIPNN_RETURN_IF_ERROR(
          MeasureZstd(kZstdLevels[l], members, opts.min_seconds, r.zstd_size[l], r.zstd[l]));
    }
    for (BenchFile* f : members) {  // free this group's buffers before the next
      f->frames = {};
      f->decoded = {};
    }
    groups.push_back(r);
  }
  PrintTables(groups, all.threads());
  return std::fflush(stdout) == 0 ? Status::Ok() : Status::FromErrno(errno, "stdout");
}

}  // namespace zipnn::tool
