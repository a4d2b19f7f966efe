#include "fs/file_reader.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "codec/codec.h"

namespace zipnn::fs {
namespace {

std::string Hex(const index::ChunkHash& h) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  for (uint8_t b : h) {
    s += kDigits[b >> 4];
    s += kDigits[b & 15];
  }
  return s;
}

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

FileReader::FileReader(index::Store& store, const FileReaderOptions& opts)
    : store_(store),
      opts_(opts),
      // Freed buffers kept and a reserve mapped ahead: a few MiB, never more than the cache.
      pool_(BufferPool::Create(opts.chunk_size, std::min<uint64_t>(16u << 20, opts.cache_size),
                               std::min<uint64_t>(8u << 20, opts.cache_size / 2))),
      // Fully read chunks are cheap to keep only while they fit in a small budget: beyond it,
      // recycling their warm buffers beats holding bytes the kernel caches anyway. Every buffer
      // the budget adds is fresh memory at first (a page-fault trap per page in a VM): 8 MiB
      // instead of 32 halved a fresh mount's faults over a model and cut its CPU by 6%.
      cache_(opts.cache_size, std::min<uint64_t>(opts.cache_size / 4, 8u << 20)) {
  if (opts_.prefetch == 0) return;
  PrefetcherOptions p;
  p.workers =
      opts_.workers != 0 ? opts_.workers : std::max(1u, std::thread::hardware_concurrency());
  p.piece = opts_.chunk_size;
  // Never read ahead so far that prefetched chunks evict each other before they are used.
  p.max_window = std::min<uint64_t>(uint64_t{opts_.prefetch} * opts_.chunk_size,
                                    std::max<uint64_t>(opts_.cache_size / 4, opts_.chunk_size));
  prefetcher_ = std::make_unique<Prefetcher>(
      p, [this](uint64_t ino, uint64_t begin, uint64_t end) { Fetch(ino, begin, end); });
}

FileReader::~FileReader() { prefetcher_.reset(); }

std::unique_ptr<FileReader::DecodeContext> FileReader::TakeContext() {
  {
    std::lock_guard lock(contexts_mu_);
    if (!contexts_.empty()) {
      std::unique_ptr<DecodeContext> ctx = std::move(contexts_.back());
      contexts_.pop_back();
      return ctx;
    }
  }
  return std::make_unique<DecodeContext>(&tables_);
}

void FileReader::ReturnContext(std::unique_ptr<DecodeContext> ctx) {
  if (ctx->frame.capacity() > (4u << 20)) ctx->frame = {};  // an odd large frame: let it go
  std::lock_guard lock(contexts_mu_);
  contexts_.push_back(std::move(ctx));
}

Result<ChunkRef> FileReader::LoadChunk(uint64_t ino, const index::ChunkLocation& loc) {
  const uint64_t start = NowNs();
  std::unique_ptr<DecodeContext> ctx = TakeContext();
  std::vector<uint8_t>& frame = ctx->frame;
  FrameDecoder& decoder = ctx->decoder;
  Status st = store_.ReadFrame(loc, frame);
  // (Memory only for a frame that checked out: a damaged record may claim any size.)
  std::shared_ptr<ChunkBytes> chunk = st.ok() ? pool_->Get(loc.raw_size) : nullptr;
  if (st.ok() && chunk == nullptr) st = Status::NoSpace("no memory for a decoded chunk");
  if (st.ok()) st = decoder.Decode(frame, std::span<uint8_t>(chunk->data(), chunk->size()));
  if (st.ok()) st = index::VerifyChunk(loc, {chunk->data(), chunk->size()});
  ReturnContext(std::move(ctx));
  if (!st.ok()) {
    const std::string key = Hex(loc.hash);
    bool first;
    {
      // Counted once per chunk, like the log line (read_errors counts the failed reads); past
      // the set's cap (memory), every failure counts.
      std::lock_guard lock(mu_);
      first = bad_chunks_.count(key) == 0;
      if (first && bad_chunks_.size() < 100000) bad_chunks_.insert(key);
    }
    if (first) {
      bad_chunk_count_.fetch_add(1, std::memory_order_relaxed);
      spdlog::error(
          "chunk {} (pack {} offset {}), bytes {}..{} of inode {}: {} (zipnnfs fsck "
          "names the files)",
          key, loc.pack_id, loc.pack_offset, loc.file_offset, loc.file_offset + loc.raw_size, ino,
          st.message());
    }
    return st;
  }
  decoded_chunks_.fetch_add(1, std::memory_order_relaxed);
  decoded_bytes_.fetch_add(loc.raw_size, std::memory_order_relaxed);
  decode_ns_.fetch_add(NowNs() - start, std::memory_order_relaxed);
  return ChunkRef(std::move(chunk));
}

Result<ReadResult> FileReader::Read(uint64_t ino, uint64_t offset, size_t size,
                                    uint64_t file_size) {
  ReadResult result;
  if (offset >= file_size || size == 0) return result;
  size = static_cast<size_t>(std::min<uint64_t>(size, file_size - offset));
  const uint64_t end = offset + size;
  reads_.fetch_add(1, std::memory_order_relaxed);

  Result<std::vector<index::ChunkLocation>> chunks = store_.ChunksInRange(ino, offset, size);
  if (!chunks.ok()) {
    read_errors_.fetch_add(1, std::memory_order_relaxed);
    return chunks.status();
  }
  if (prefetcher_) {
    prefetcher_->OnRead(ino, offset, size, file_size);
    PrefetchTensor(ino, offset, file_size);
    // A read of several chunks not yet decoded: let the workers decode the later ones while
    // this thread decodes the first.
    if (chunks->size() > 1 && !cache_.Contains((*chunks)[1].hash)) {
      prefetcher_->Enqueue(ino, (*chunks)[1].file_offset, end);
    }
  }

  const bool copy = chunks->size() > ReadResult::kMaxPinnedChunks;
  if (copy) {
    try {
      result.copy.resize(size);
    } catch (const std::bad_alloc&) {
      read_errors_.fetch_add(1, std::memory_order_relaxed);
      return Status::NoSpace("no memory for a read of " + std::to_string(size) + " bytes");
    }
    result.iov.push_back(iovec{result.copy.data(), size});
  }
  uint64_t covered = offset;
  for (const index::ChunkLocation& c : *chunks) {
    const uint64_t c_end = c.file_offset + c.raw_size;
    if (c.file_offset > covered || c_end <= covered) break;  // a gap: reported below
    Result<ChunkRef> ref = cache_.Get(c.hash, [&] { return LoadChunk(ino, c); });
    if (!ref.ok()) {
      read_errors_.fetch_add(1, std::memory_order_relaxed);
      return Status(ref.status().code(), "bytes " + std::to_string(c.file_offset) + ".." +
                                             std::to_string(c_end) + " of inode " +
                                             std::to_string(ino) + ": " + ref.status().message());
    }
    const uint64_t to = std::min(end, c_end);
    uint8_t* base = (*ref)->data() + (covered - c.file_offset);
    if (copy) {
      std::memcpy(result.copy.data() + (covered - offset), base, to - covered);
    } else {
      result.iov.push_back(iovec{base, static_cast<size_t>(to - covered)});
      result.chunks.push_back(std::move(*ref));
    }
    cache_.NoteServed(c.hash, to - covered);
    covered = to;
    if (covered == end) break;
  }
  if (covered != end) {
    read_errors_.fetch_add(1, std::memory_order_relaxed);
    return Status::Corrupt("inode " + std::to_string(ino) + ": offset index does not cover bytes " +
                           std::to_string(covered) + ".." + std::to_string(end));
  }
  result.size = size;
  read_bytes_.fetch_add(size, std::memory_order_relaxed);
  return result;
}

void FileReader::Fetch(uint64_t ino, uint64_t begin, uint64_t end) {
  Result<std::vector<index::ChunkLocation>> chunks = store_.ChunksInRange(ino, begin, end - begin);
  if (!chunks.ok()) return;  // the file is gone: nothing to prefetch
  for (const index::ChunkLocation& c : *chunks) {
    cache_.Prefetch(c.hash, [&] { return LoadChunk(ino, c); });
  }
}

Status FileReader::ReadBytes(uint64_t ino, uint64_t offset, std::span<uint8_t> out,
                             uint64_t file_size) {
  // A chunk's worth at a time: a read pins every chunk it spans, and a safetensors header may be
  // 100 MiB (a 48 MiB one, read whole, held 160 MiB in a daemon with a 1 MiB cache).
  for (size_t done = 0; done < out.size();) {
    const size_t want = std::min<size_t>(out.size() - done, opts_.chunk_size);
    Result<ReadResult> r = Read(ino, offset + done, want, file_size);
    if (!r.ok()) return r.status();
    if (r->size != want) return Status::Corrupt("short read");
    for (const iovec& v : r->iov) {
      std::memcpy(out.data() + done, v.iov_base, v.iov_len);
      done += v.iov_len;
    }
  }
  return Status::Ok();
}

void FileReader::OnOpen(uint64_t ino, uint64_t file_size) {
  if (!prefetcher_) return;
  {
    std::lock_guard lock(mu_);
    if (tensors_.count(ino) != 0) return;
  }
  // Content, not the name, says whether a file is safetensors or GGUF: the Hugging Face cache
  // names its blobs by hash.
  auto tensors = std::make_shared<Tensors>();
  if (file_size >= 2 * opts_.chunk_size) {  // (smaller files are read whole soon enough)
    Result<TensorLayout> header = ParseTensorLayout(
        [&](uint64_t off, std::span<uint8_t> out) { return ReadBytes(ino, off, out, file_size); },
        file_size);
    if (header.ok()) {
      for (const TensorInfo& t : header->tensors) tensors->ranges.emplace_back(t.begin, t.end);
    }
  }
  std::lock_guard lock(mu_);
  if (tensors_.size() >= 4096) tensors_.clear();  // a bound, not a policy: it is refilled on open
  tensors_.emplace(ino, std::move(tensors));
}

void FileReader::PrefetchTensor(uint64_t ino, uint64_t offset, uint64_t file_size) {
  std::shared_ptr<const Tensors> tensors;
  {
    std::lock_guard lock(mu_);
    auto it = tensors_.find(ino);
    if (it == tensors_.end()) return;
    tensors = it->second;
  }
  const auto& r = tensors->ranges;
  auto it = std::upper_bound(r.begin(), r.end(), std::make_pair(offset, UINT64_MAX));
  if (it == r.begin()) return;
  --it;
  // Only a read near the tensor's start counts as a touch: loaders read a tensor from its
  // start, while random reads land anywhere and should not pull whole tensors in. The tensor is
  // prefetched up to the stream window: if it is read on, the stream's prefetching takes over.
  if (offset >= it->second || offset - it->first >= opts_.chunk_size) return;
  const uint64_t end = std::min({it->second, it->first + prefetcher_->max_window(), file_size});
  if (end - it->first > opts_.chunk_size) prefetcher_->Enqueue(ino, it->first, end);
}

void FileReader::Forget(uint64_t ino) {
  if (prefetcher_) prefetcher_->Forget(ino);
  std::lock_guard lock(mu_);
  tensors_.erase(ino);
}

std::string FileReader::StatsJson() const {
  const ChunkCacheStats c = cache_.stats();
  nlohmann::json j;
  j["reads"] = reads_.load();
  j["read_bytes"] = read_bytes_.load();
  j["read_errors"] = read_errors_.load();
  j["bad_chunks"] = bad_chunk_count_.load();
  j["decoded_chunks"] = decoded_chunks_.load();
  j["decoded_bytes"] = decoded_bytes_.load();
  j["decode_seconds"] = static_cast<double>(decode_ns_.load()) / 1e9;
  j["cache"] = {{"capacity_bytes", cache_.capacity()},
                {"bytes", c.bytes},
                {"chunks", c.entries},
                {"hits", c.hits},
                {"misses", c.misses},
                {"joins", c.joins},
                {"evictions", c.evictions},
                {"failures", c.failures},
                {"prefetched", c.prefetched},
                {"prefetch_hits", c.prefetch_hits}};
  if (prefetcher_) {
    const PrefetcherStats p = prefetcher_->stats();
    j["prefetch"] = {{"jobs_queued", p.jobs_queued},
                     {"jobs_dropped", p.jobs_dropped},
                     {"jobs_passed", p.jobs_passed},
                     {"streams_detected", p.streams_detected}};
  }
  return j.dump();
}

}  // namespace zipnn::fs
