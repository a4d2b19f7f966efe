// compress, decompress, cat and info.
#include "tools/commands.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <string_view>

#include "codec/codec.h"
#include "codec/container.h"
#include "tools/file_io.h"

namespace zipnn::tool {
namespace {

// Frames coded ahead of the one being written: enough to keep every thread busy while the writer
// waits for a slow chunk, few enough to bound memory (about 64 MiB of frames, unless chunks are
// larger).
size_t OrderedWindow(unsigned threads, uint64_t chunk_size) {
  const size_t least = 2 * size_t{threads} + 2;
  return std::max(least, std::min<size_t>(8 * size_t{threads},
                                          (64u << 20) / std::max<uint64_t>(chunk_size, 1)));
}
// Extents read ahead for a single coding thread: a few, about 16 MiB at most.
size_t ReadAhead(unsigned threads, uint64_t chunk_size) {
  if (threads > 1) return 0;
  return std::clamp<size_t>((16u << 20) / std::max<uint64_t>(chunk_size, 1), 2, 8);
}
constexpr size_t kCatPieceSize = 4u << 20;

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One line on stderr: sizes, the ratio compressed/original, time and speed over original bytes.
void PrintSummary(const std::string& from, const std::string& to, uint64_t from_bytes,
                  uint64_t to_bytes, uint64_t original, uint64_t compressed, double seconds) {
  std::fprintf(stderr, "%s -> %s: %.2f MB -> %.2f MB (ratio %.3f) in %.2f s, %.0f MB/s\n",
               from.c_str(), to.c_str(), from_bytes / 1e6, to_bytes / 1e6,
               original ? static_cast<double>(compressed) / original : 0.0, seconds,
               seconds > 0 ? original / 1e6 / seconds : 0.0);
}

Result<ContainerReader> OpenContainer(const std::string& path, mode_t* mode) {
  Result<InputFile> in = OpenInput(path);
  if (!in.ok()) return in.status();
  if (mode) *mode = in->mode;
  Result<ContainerReader> reader = ContainerReader::OpenFd(std::move(in->fd));
  if (!reader.ok()) return WithPath(path, reader.status());
  return reader;
}

// Writing a file's own compressed (or decompressed) form over it, even with -f, trades the only
// copy for a different file: as gzip, refuse.
Status NotTheInput(const std::string& in, const std::string& out) {
  struct stat a, b;
  if (::stat(in.c_str(), &a) == 0 && ::stat(out.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
      a.st_ino == b.st_ino && S_ISREG(b.st_mode)) {
    return Status::InvalidArgument(out + ": is the input file itself");
  }
  return Status::Ok();
}

}  // namespace

Status Compress(const CompressOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string out_path = opts.output.empty() ? opts.input + ".znn" : opts.output;
  Result<InputFile> in = OpenInput(opts.input);
  if (!in.ok()) return in.status();
  ZIPNN_RETURN_IF_ERROR(NotTheInput(opts.input, out_path));
  Result<AtomicOutputFile> out = AtomicOutputFile::Create(out_path, opts.force, in->mode);
  if (!out.ok()) return out.status();
  const int fd = in->fd.get();
  ReadAtFn read_at = [fd](uint64_t offset, std::span<uint8_t> out) {
    return PreadFull(fd, offset, out);
  };
  PlanOptions plan_opts;
  plan_opts.chunk_size = opts.chunk_size;
  Result<std::vector<ChunkSpec>> plan = PlanChunks(read_at, in->size, plan_opts);
  if (!plan.ok()) return WithPath(opts.input, plan.status());

  ContainerWriter writer = ContainerWriter::ForFd(out->fd());
  EncodeOptions enc;
  enc.zstd_level = opts.level;
  ParallelCodec codec(opts.threads, enc);

  const std::vector<ChunkSpec>& chunks = *plan;
  for (size_t i = 1; i < chunks.size(); i++) {
    // The container numbers original bytes by summing frame sizes: a gap would go unnoticed.
    if (chunks[i].offset != chunks[i - 1].offset + chunks[i - 1].size) {
      return Status::Corrupt(opts.input + ": chunk plan is not contiguous");  // a codec bug
    }
  }
  // Each worker reads its own chunk (the reads run in parallel, and the chunk is in the worker's
  // cache when it codes it), or one coding thread has them read ahead; frames are appended in
  // order as they come.
  std::vector<ExtentReader::Extent> extents;
  for (const ChunkSpec& c : chunks) extents.push_back({c.offset, c.size});
  ExtentReader input(fd, std::move(extents), ReadAhead(codec.threads(), opts.chunk_size));
  std::vector<ByteBuffer> data(codec.threads());
  ZIPNN_RETURN_IF_ERROR(codec.RunOrdered(
      chunks.size(), OrderedWindow(codec.threads(), opts.chunk_size),
      [&](size_t i, unsigned w, std::vector<uint8_t>& frame) {
        const ChunkSpec& c = chunks[i];
        frame.clear();
        frame.reserve(MaxFrameSize(c.size));  // at once: growing by steps touches more new pages
        Status st = input.Read(i, data[w]);
        if (st.ok())
          st = codec.encoder(w).Encode(data[w], c.dtype, frame, c.segments, nullptr, c.grid);
        return WithPath(opts.input, std::move(st));
      },
      [&](size_t, std::span<const uint8_t> frame) {
        ZIPNN_RETURN_IF_ERROR(WithPath(out_path, writer.Append(frame)));
        out->Wrote(frame.size());
        return Status::Ok();
      }));
  ZIPNN_RETURN_IF_ERROR(WithPath(opts.input, CheckEndsAt(fd, in->size)));
  ZIPNN_RETURN_IF_ERROR(WithPath(out_path, writer.Finish()));
  ZIPNN_RETURN_IF_ERROR(out->Commit());
  if (!opts.quiet) {
    PrintSummary(opts.input, out_path, in->size, writer.bytes_written(), in->size,
                 writer.bytes_written(), SecondsSince(t0));
  }
  return Status::Ok();
}

Status Decompress(const DecompressOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string out_path = opts.output;
  if (out_path.empty()) {
    constexpr std::string_view kSuffix = ".znn";
    if (opts.input.size() <= kSuffix.size() || !opts.input.ends_with(kSuffix)) {
      return Status::InvalidArgument(opts.input + ": no .znn suffix; name the output with -o");
    }
    out_path = opts.input.substr(0, opts.input.size() - kSuffix.size());
  }
  mode_t mode = 0644;
  Result<ContainerReader> reader = OpenContainer(opts.input, &mode);
  if (!reader.ok()) return reader.status();
  ZIPNN_RETURN_IF_ERROR(NotTheInput(opts.input, out_path));
  Result<AtomicOutputFile> out = AtomicOutputFile::Create(out_path, opts.force, mode);
  if (!out.ok()) return out.status();
  ParallelCodec codec(opts.threads);

  // As in Compress: workers read their own frames, or one has them read ahead; the output is
  // written in order as it comes.
  const std::vector<ContainerEntry>& entries = reader->entries();
  std::vector<ExtentReader::Extent> extents;
  uint64_t largest = 0;
  for (const ContainerEntry& e : entries) {
    extents.push_back({e.offset, e.frame_size});
    largest = std::max<uint64_t>(largest, e.raw_size);
  }
  ExtentReader input(reader->fd(), std::move(extents), ReadAhead(codec.threads(), largest));
  std::vector<ByteBuffer> frame(codec.threads());
  const bool seekable = out->seekable();
  ZIPNN_RETURN_IF_ERROR(codec.RunOrdered(
      entries.size(), OrderedWindow(codec.threads(), largest),
      [&](size_t i, unsigned w, std::vector<uint8_t>& raw) {
        const ContainerEntry& e = entries[i];
        ZIPNN_RETURN_IF_ERROR(WithPath(opts.input, input.Read(i, frame[w])));
        ZIPNN_RETURN_IF_ERROR(WithPath(opts.input, CheckFrameAgainstEntry(frame[w], e)));
        raw.resize(e.raw_size);
        return WithPath(opts.input, codec.decoder(w).Decode(frame[w], raw));
      },
      [&](size_t i, std::span<const uint8_t> raw) {
        // All-zero pieces of a new file stay holes, as cp --sparse=auto leaves them (writing a
        // sparse model's 6 GiB of zeros took 20 s). (In order: a pipe takes plain writes.)
        if (out->fresh() && AllZero(raw)) return Status::Ok();
        ZIPNN_RETURN_IF_ERROR(
            WithPath(out_path, seekable ? PwriteFull(out->fd(), entries[i].raw_offset, raw)
                                        : WriteFull(out->fd(), raw)));
        out->Wrote(raw.size());
        return Status::Ok();
      }));
  if (out->fresh() && ::ftruncate(out->fd(), static_cast<off_t>(reader->total_raw_size())) != 0)
    return Status::FromErrno(errno, out_path);
  ZIPNN_RETURN_IF_ERROR(out->Commit());
  if (!opts.quiet) {
    PrintSummary(opts.input, out_path, reader->file_size(), reader->total_raw_size(),
                 reader->total_raw_size(), reader->file_size(), SecondsSince(t0));
  }
  return Status::Ok();
}

Status Cat(const CatOptions& opts) {
  Result<ContainerReader> reader = OpenContainer(opts.input, nullptr);
  if (!reader.ok()) return reader.status();
  const uint64_t total = reader->total_raw_size();
  if (opts.offset > total) {
    return Status::InvalidArgument(opts.input + ": offset " + std::to_string(opts.offset) +
                                   " is past the end (" + std::to_string(total) + " bytes)");
  }
  const uint64_t end = opts.offset + std::min(opts.length.value_or(total), total - opts.offset);
  std::vector<uint8_t> piece;
  for (uint64_t pos = opts.offset; pos < end;) {
    piece.resize(static_cast<size_t>(std::min<uint64_t>(kCatPieceSize, end - pos)));
    ZIPNN_RETURN_IF_ERROR(WithPath(opts.input, reader->ReadRangeInto(pos, piece)));
    ZIPNN_RETURN_IF_ERROR(WithPath("stdout", WriteFull(STDOUT_FILENO, piece)));
    pos += piece.size();
  }
  return Status::Ok();
}

namespace {

struct Tally {
  uint64_t frames = 0, raw = 0, stored = 0;
  void Add(const ContainerEntry& e) {
    ++frames;
    raw += e.raw_size;
    stored += e.frame_size;
  }
};

void PrintTallyRow(std::string_view name, const Tally& t) {
  std::printf("| %.*s | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %.4f |\n",
              static_cast<int>(name.size()), name.data(), t.frames, t.raw, t.stored,
              t.raw ? static_cast<double>(t.stored) / t.raw : 0.0);
}

template <size_t N, class NameFn>
void PrintTallyTable(std::string_view what, const std::array<Tally, N>& tallies, const Tally& total,
                     NameFn name) {
  std::printf(
      "\n| %.*s | frames | raw bytes | stored bytes | stored/raw |\n|---|--:|--:|--:|--:|\n",
      static_cast<int>(what.size()), what.data());
  for (size_t i = 0; i < N; ++i) {
    if (tallies[i].frames) PrintTallyRow(name(i), tallies[i]);
  }
  PrintTallyRow("**total**", total);
}

}  // namespace

Status Info(const std::string& input) {
  Result<ContainerReader> reader = OpenContainer(input, nullptr);
  if (!reader.ok()) return reader.status();
  std::array<Tally, kNumMethods> by_method{};
  std::array<Tally, kNumDTypes> by_dtype{};
  Tally total;
  for (const ContainerEntry& e : reader->entries()) {
    by_method[static_cast<size_t>(e.method)].Add(e);
    by_dtype[static_cast<size_t>(e.dtype)].Add(e);
    total.Add(e);
  }
  const uint64_t overhead = reader->file_size() - total.stored;
  std::printf("%s: %" PRIu64 " bytes holding %" PRIu64 " original bytes (%.4f) in %" PRIu64
              " frames; container overhead %" PRIu64 " bytes\n",
              input.c_str(), reader->file_size(), reader->total_raw_size(),
              total.raw ? static_cast<double>(reader->file_size()) / total.raw : 0.0, total.frames,
              overhead);
  PrintTallyTable("method", by_method, total,
                  [](size_t i) { return MethodName(static_cast<Method>(i)); });
  PrintTallyTable("dtype", by_dtype, total,
                  [](size_t i) { return DTypeName(static_cast<DType>(i)); });
  return std::fflush(stdout) == 0 ? Status::Ok() : Status::FromErrno(errno, "stdout");
}

}  // namespace zipnn::tool
