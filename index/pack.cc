#include "index/pack.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

namespace zipnn::index {

namespace {
// Direct writes wait for the disk: a huge page at a time (~1 ms here) keeps the wait short.
constexpr size_t kWriteBufferSize = 2u << 20;
constexpr size_t kSkipBufferSize = 256u << 10;  // without O_DIRECT, larger appends skip the buffer
constexpr size_t kBlock = 4096;  // O_DIRECT's alignment of offsets, lengths and memory
}  // namespace

namespace {
std::string PackName(uint32_t pack_id) {
  char name[32];
  std::snprintf(name, sizeof(name), "pack-%06u.znp", pack_id);
  return name;
}
}  // namespace

std::string PackPath(const std::string& packs_dir, uint32_t pack_id) {
  return packs_dir + "/" + PackName(pack_id);
}

Status SyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, dir);
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, dir + ": fsync");
  return Status::Ok();
}

PackReader::PackReader(std::string packs_dir)
    : dir_(std::move(packs_dir)), dir_fd_(::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)) {}

Status PackReader::Read(uint32_t pack_id, uint64_t offset, std::span<uint8_t> out) {
  int fd = -1;
  {
    std::lock_guard lock(mutex_);
    auto it = fds_.find(pack_id);
    if (it == fds_.end()) {
      const std::string path = PackPath(dir_, pack_id);
      UniqueFd opened(dir_fd_.valid()
                          ? ::openat(dir_fd_.get(), PackName(pack_id).c_str(), O_RDONLY | O_CLOEXEC)
                          : ::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      // A pack the index references and the disk lacks is damage (EIO to a reader), not a
      // missing file the caller asked for (ENOENT).
      if (!opened.valid() && errno == ENOENT) return Status::Corrupt(path + ": pack file missing");
      if (!opened.valid()) return Status::FromErrno(errno, path);
      it = fds_.emplace(pack_id, std::move(opened)).first;
    }
    fd = it->second.get();  // fds are never closed while the reader lives
  }
  Status st = PreadFull(fd, offset, out);
  if (!st.ok()) {
    return Status(st.code(),
                  PackPath(dir_, pack_id) + " at " + std::to_string(offset) + ": " + st.message());
  }
  return st;
}

Result<PackWriter> PackWriter::Open(const std::string& packs_dir, uint32_t pack_id,
                                    uint64_t committed) {
  const std::string path = PackPath(packs_dir, pack_id);
  PackWriter w;
  w.fd_.Reset(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!w.fd_.valid() && errno == ENOENT) {
    // A new pack: the commits that will reference it need its name durable, not only its bytes.
    w.fd_.Reset(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!w.fd_.valid()) return Status::FromErrno(errno, path);
    ZIPNN_RETURN_IF_ERROR(SyncDir(packs_dir));
  }
  if (!w.fd_.valid()) return Status::FromErrno(errno, path);
  const off_t size = ::lseek(w.fd_.get(), 0, SEEK_END);
  if (size < 0) return Status::FromErrno(errno, path);
  if (static_cast<uint64_t>(size) < committed) {
    return Status::Corrupt(path + ": " + std::to_string(size) + " bytes, but the index says " +
                           std::to_string(committed) + " are committed");
  }
  if (static_cast<uint64_t>(size) > committed) {
    if (::ftruncate(w.fd_.get(), static_cast<off_t>(committed)) != 0) {
      return Status::FromErrno(errno, path + ": truncating uncommitted bytes");
    }
  }
  // (Where O_DIRECT is refused, at open or at the first write, writes go through the cache.)
  w.direct_fd_.Reset(::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  w.id_ = pack_id;
  w.end_ = w.committed_ = w.flushed_ = w.base_ = committed;
  return w;
}

Status PackWriter::LoadTail() {
  if (!buffer_.Reserve(kWriteBufferSize)) return Status::FromErrno(ENOMEM, "pack buffer");
  base_ = direct() ? flushed_ & ~uint64_t{kBlock - 1} : flushed_;
  if (base_ < flushed_) {
    Status st = PreadFull(fd_.get(), base_, {buffer_.data(), flushed_ - base_});
    if (!st.ok()) return Status(st.code(), "pack " + st.message());
  }
  tail_ready_ = true;
  return Status::Ok();
}

Status PackWriter::Append(std::span<const uint8_t> frame) {
  if (!direct() && frame.size() >= kSkipBufferSize) {  // through the cache: no copy
    ZIPNN_RETURN_IF_ERROR(Flush(true));
    ZIPNN_RETURN_IF_ERROR(WriteBuffered(flushed_, frame));
    end_ = flushed_ = base_ = flushed_ + frame.size();
    return Status::Ok();
  }
  while (!frame.empty()) {
    if (!tail_ready_) ZIPNN_RETURN_IF_ERROR(LoadTail());
    if (end_ - base_ == buffer_.capacity()) ZIPNN_RETURN_IF_ERROR(Flush(false));
    const size_t n = std::min<size_t>(frame.size(), buffer_.capacity() - (end_ - base_));
    std::copy_n(frame.begin(), n, buffer_.data() + (end_ - base_));
    end_ += n;
    frame = frame.subspan(n);
  }
  return Status::Ok();
}

Status PackWriter::Flush(bool all) {
  if (!tail_ready_) return Status::Ok();  // nothing appended since it was last reset
  if (direct()) {
    const size_t whole = (end_ - base_) & ~(kBlock - 1);
    if (base_ + whole > flushed_) {
      ZIPNN_RETURN_IF_ERROR(WriteDirect(base_, {buffer_.data(), whole}));
      flushed_ = base_ + whole;
    }
    if (direct() && whole != 0) {  // (a refused write falls back, keeping the buffer as it is)
      std::memmove(buffer_.data(), buffer_.data() + whole, end_ - base_ - whole);
      base_ += whole;
    }
    if (direct() && !all) return Status::Ok();
  }
  if (end_ > flushed_) {
    ZIPNN_RETURN_IF_ERROR(WriteBuffered(
        flushed_, {buffer_.data() + (flushed_ - base_), static_cast<size_t>(end_ - flushed_)}));
    flushed_ = end_;
  }
  if (!direct()) base_ = flushed_;
  return Status::Ok();
}

Status PackWriter::WriteDirect(uint64_t offset, std::span<const uint8_t> bytes) {
  if (::pwrite(direct_fd_.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)) ==
      static_cast<ssize_t>(bytes.size())) {
    // Direct writes still sit in the disk's write cache (here the host's) until a flush, which
    // takes time in proportion to what it flushes: left to Sync, the one flush before the
    // commit took 52 ms of an 0.13 s import of the corpus; synced as they go, 4 ms.
    StartSyncer();
    if (syncer_) syncer_->Wrote(bytes.size());
    return Status::Ok();
  }
  // A short write (the disk full, say) ends in the buffered write's error, if any; a refusal
  // (EINVAL: alignment the file system does not take) ends direct writes.
  direct_fd_.Reset();
  return WriteBuffered(offset, bytes);
}

Status PackWriter::WriteBuffered(uint64_t offset, std::span<const uint8_t> bytes) {
  if (Status st = PwriteFull(fd_.get(), offset, bytes); !st.ok())
    return Status(st.code(), "pack " + st.message());
  if (direct()) return Status::Ok();  // only Sync's tail: nothing worth starting early
  // Start writeback now, so the sync before the commit has little left to wait for. Only a
  // hint: durability still comes from Sync.
  (void)::sync_file_range(fd_.get(), static_cast<off_t>(offset), static_cast<off_t>(bytes.size()),
                          SYNC_FILE_RANGE_WRITE);
  StartSyncer();
  if (syncer_) syncer_->Wrote(bytes.size());
  return Status::Ok();
}

void PackWriter::StartSyncer() {
  // Started at the first write: most writers (a mount, opening old packs) never write. Without
  // one, only Sync syncs.
  if (!syncer_) syncer_ = BackgroundSyncer::Start(fd_.get(), "pack " + std::to_string(id_));
}

Status PackWriter::Sync() {
  ZIPNN_RETURN_IF_ERROR(Flush(true));
  // A background sync under way leaves this one only the tail; its failure is ours too.
  if (syncer_) ZIPNN_RETURN_IF_ERROR(syncer_->Drain());
  if (::fdatasync(fd_.get()) != 0) return Status::FromErrno(errno, "pack fdatasync");
  return Status::Ok();
}

void PackWriter::SyncSoon() {
  if (syncer_) syncer_->Request();
}

Status PackWriter::Truncate(uint64_t offset) {
  if (offset < committed_ || offset > end_) return Status::InvalidArgument("pack truncate");
  // Back to the commit, a background sync's failure concerns only bytes cut here (as in
  // Rollback); past it, it may concern frames still to be committed, and stays for Sync.
  if (offset == committed_ && syncer_) (void)syncer_->Drain();
  // Cut the file even when `offset` is past what was written: a failed (short) write may have
  // left bytes beyond flushed_.
  if (::ftruncate(fd_.get(), static_cast<off_t>(std::min(offset, flushed_))) != 0) {
    return Status::FromErrno(errno, "pack truncate");
  }
  if (offset < flushed_) {
    flushed_ = offset;
    tail_ready_ = false;  // the buffer may not reach back to the new last block
  }
  end_ = offset;
  return Status::Ok();
}

Status PackWriter::Rollback() {
  // Everything committed was synced before its commit: a background failure since concerns only
  // the bytes dropped here, and must not fail the next group.
  if (syncer_) (void)syncer_->Drain();
  end_ = flushed_ = committed_;
  tail_ready_ = false;
  if (::ftruncate(fd_.get(), static_cast<off_t>(committed_)) != 0) {
    return Status::FromErrno(errno, "pack truncate");
  }
  return Status::Ok();
}

}  // namespace zipnn::index
