// The .znn container: its seek table, ContainerWriter and ContainerReader.
#include "codec/container.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string>
#include <utility>

#include "codec/bytes.h"

namespace zipnn {

static_assert(std::endian::native == std::endian::little, "the container code assumes it");

namespace {

using internal::Load16;
using internal::Load32;
using internal::Load64;
using internal::Store16;
using internal::Store32;
using internal::Store64;

constexpr uint8_t kMagic[4] = {'Z', 'N', 'N', 'C'};
constexpr size_t kFooterCheckedBytes = 40;  // the footer check covers bytes [0, 40)
constexpr size_t kWriteBufferSize = 1u << 20;
constexpr size_t kWriteDirectSize = 64u << 10;  // larger writes skip the buffer's copy
constexpr size_t kRangeReadBatch = 16u << 20;   // compressed bytes ReadRange reads at once

struct Footer {
  uint64_t entry_count = 0;
  uint64_t table_offset = 0;
  uint64_t total_raw_size = 0;
  uint64_t table_checksum = 0;
};

uint32_t FooterCheck(const uint8_t* footer) {
  return static_cast<uint32_t>(Checksum({footer, kFooterCheckedBytes}));
}

void EncodeHeader(uint8_t* p) {
  std::memcpy(p, kMagic, 4);
  Store16(p + 4, kContainerVersion);
  Store16(p + 6, 0);  // flags
}

void EncodeEntry(const ContainerEntry& e, uint8_t* p) {
  std::memset(p, 0, kContainerEntrySize);
  Store64(p, e.offset);
  Store32(p + 8, e.frame_size);
  Store32(p + 12, e.raw_size);
  Store64(p + 16, e.checksum);
  p[24] = static_cast<uint8_t>(e.dtype);
  p[25] = static_cast<uint8_t>(e.method);
}

void EncodeFooter(const Footer& f, uint8_t* p) {
  std::memset(p, 0, kContainerFooterSize);
  Store64(p, f.entry_count);
  Store64(p + 8, f.table_offset);
  Store64(p + 16, f.total_raw_size);
  Store64(p + 24, f.table_checksum);
  Store16(p + 32, kContainerVersion);
  Store32(p + 40, FooterCheck(p));
  std::memcpy(p + 44, kMagic, 4);
}

// Size rules every entry obeys; nullptr if it does, else what is wrong.
const char* CheckEntrySizes(const ContainerEntry& e) {
  if (e.raw_size > kMaxChunkSize || e.frame_size < kFrameHeaderSize ||
      e.frame_size > MaxFrameSize(e.raw_size)) {
    return "bad frame or raw size";
  }
  if ((e.method == Method::kZero && e.frame_size != kFrameHeaderSize) ||
      (e.method == Method::kRaw && e.frame_size != kFrameHeaderSize + e.raw_size)) {
    return "frame size does not fit method";
  }
  return nullptr;
}

Status NotAContainer() { return Status::Corrupt("not a zipnn container"); }

// Checks the 8-byte file header; `file_size` lets a short file be called what it is.
Status CheckHeader(std::span<const uint8_t> header, uint64_t file_size) {
  if (header.size() < 4 || std::memcmp(header.data(), kMagic, 4) != 0) return NotAContainer();
  if (file_size < kContainerHeaderSize + kContainerFooterSize) {
    return Status::Corrupt("truncated container (" + std::to_string(file_size) + " bytes)");
  }
  uint16_t version = Load16(header.data() + 4);
  if (version != kContainerVersion) {
    return Status::Unsupported("container version " + std::to_string(version) + " not supported");
  }
  if (Load16(header.data() + 6) != 0) return Status::Unsupported("unknown container flags");
  return Status::Ok();
}

Result<Footer> ParseFooter(std::span<const uint8_t> p, uint64_t file_size) {
  if (std::memcmp(p.data() + 44, kMagic, 4) != 0) {
    return Status::Corrupt("truncated or corrupt container: no footer");
  }
  if (Load32(p.data() + 40) != FooterCheck(p.data())) {
    return Status::Corrupt("corrupt container: footer check mismatch");
  }
  if (Load16(p.data() + 32) != kContainerVersion) {
    return Status::Corrupt("corrupt container: footer version differs from header");
  }
  if (Load16(p.data() + 34) != 0 || Load32(p.data() + 36) != 0) {
    return Status::Corrupt("corrupt container: reserved footer bytes set");
  }
  Footer f;
  f.entry_count = Load64(p.data());
  f.table_offset = Load64(p.data() + 8);
  f.total_raw_size = Load64(p.data() + 16);
  f.table_checksum = Load64(p.data() + 24);
  // Caps the count by what the file can hold before anything is allocated for it.
  uint64_t room = file_size - kContainerHeaderSize - kContainerFooterSize;
  if (f.entry_count > room / kContainerEntrySize) {
    return Status::Corrupt("corrupt container: entry count exceeds file size");
  }
  if (f.table_offset != file_size - kContainerFooterSize - f.entry_count * kContainerEntrySize) {
    return Status::Corrupt("corrupt container: seek table not before footer");
  }
  return f;
}

// Decodes and validates the seek table: entries contiguous from the header to the table, sane
// sizes and enums, raw sizes summing to the footer's total.
Result<ContainerIndex> ParseTable(std::span<const uint8_t> table, const Footer& f,
                                  uint64_t file_size) {
  if (table.size() != f.entry_count * kContainerEntrySize) {
    return Status::Corrupt("corrupt container: seek table size");
  }
  if (Checksum(table) != f.table_checksum) {
    return Status::Corrupt("corrupt container: seek table checksum mismatch");
  }
  ContainerIndex index;
  index.file_size = file_size;
  index.entries.resize(f.entry_count);
  uint64_t next_offset = kContainerHeaderSize;
  uint64_t raw_offset = 0;
  for (uint64_t i = 0; i < f.entry_count; ++i) {
    const uint8_t* p = table.data() + i * kContainerEntrySize;
    ContainerEntry& e = index.entries[i];
    e.offset = Load64(p);
    e.frame_size = Load32(p + 8);
    e.raw_size = Load32(p + 12);
    e.checksum = Load64(p + 16);
    auto bad = [i](const char* why) {
      return Status::Corrupt("corrupt container: entry " + std::to_string(i) + ": " + why);
    };
    if (p[24] >= kNumDTypes || p[25] >= kNumMethods) return bad("bad dtype or method");
    e.dtype = static_cast<DType>(p[24]);
    e.method = static_cast<Method>(p[25]);
    for (int k = 26; k < 32; ++k) {
      if (p[k] != 0) return bad("padding set");
    }
    if (e.offset != next_offset) return bad("frames not contiguous");
    if (const char* why = CheckEntrySizes(e)) return bad(why);
    if (e.frame_size > f.table_offset - e.offset) {
      return bad("frame overlaps seek table");
    }
    next_offset = e.offset + e.frame_size;
    e.raw_offset = raw_offset;
    raw_offset += e.raw_size;  // cannot overflow: entries <= 2^59, raw sizes <= 2^26
  }
  if (next_offset != f.table_offset) return Status::Corrupt("corrupt container: gap before table");
  if (raw_offset != f.total_raw_size) {
    return Status::Corrupt("corrupt container: raw sizes do not sum to the total");
  }
  index.total_raw_size = raw_offset;
  return index;
}

}  // namespace

Status CheckFrameAgainstEntry(std::span<const uint8_t> frame, const ContainerEntry& entry) {
  if (frame.size() < kFrameHeaderSize) return Status::Corrupt("frame shorter than its header");
  Result<FrameInfo> info = ParseFrameHeader(frame.first(kFrameHeaderSize));
  if (!info.ok()) return info.status();
  if (info->method != entry.method || info->dtype != entry.dtype ||
      info->raw_size != entry.raw_size || info->checksum != entry.checksum ||
      info->frame_size() != entry.frame_size) {
    return Status::Corrupt("corrupt container: frame header disagrees with seek table");
  }
  return Status::Ok();
}

Result<ContainerIndex> ParseContainer(std::span<const uint8_t> file) {
  ZIPNN_RETURN_IF_ERROR(CheckHeader(file, file.size()));
  Result<Footer> footer = ParseFooter(file.last(kContainerFooterSize), file.size());
  if (!footer.ok()) return footer.status();
  Result<ContainerIndex> index =
      ParseTable(file.subspan(footer->table_offset, footer->entry_count * kContainerEntrySize),
                 *footer, file.size());
  if (!index.ok()) return index.status();
  for (const ContainerEntry& e : index->entries) {
    ZIPNN_RETURN_IF_ERROR(CheckFrameAgainstEntry(file.subspan(e.offset, e.frame_size), e));
  }
  return index;
}

// ---- ContainerWriter -------------------------------------------------------------------------

ContainerWriter::ContainerWriter(int fd, bool owns_fd)
    : owned_fd_(owns_fd ? fd : -1), fd_(fd), offset_(kContainerHeaderSize) {
  buffer_.reserve(kWriteBufferSize);
  buffer_.resize(kContainerHeaderSize);
  EncodeHeader(buffer_.data());
}

ContainerWriter::ContainerWriter(ContainerWriter&&) noexcept = default;
ContainerWriter& ContainerWriter::operator=(ContainerWriter&&) noexcept = default;
ContainerWriter::~ContainerWriter() = default;

Result<ContainerWriter> ContainerWriter::Create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return Status::FromErrno(errno, path);
  return ContainerWriter(fd, /*owns_fd=*/true);
}

ContainerWriter ContainerWriter::ForFd(int fd) { return ContainerWriter(fd, /*owns_fd=*/false); }

Status ContainerWriter::Fail(Status s) {
  if (error_.ok()) error_ = s;
  return s;
}

Status ContainerWriter::Flush() {
  Status s = WriteFull(fd_, buffer_);
  buffer_.clear();
  return s;
}

Status ContainerWriter::Write(std::span<const uint8_t> bytes) {
  if (buffer_.size() + bytes.size() > kWriteBufferSize || bytes.size() >= kWriteDirectSize) {
    ZIPNN_RETURN_IF_ERROR(Flush());
  }
  if (bytes.size() >= kWriteDirectSize) return WriteFull(fd_, bytes);
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  return Status::Ok();
}

Status ContainerWriter::Append(std::span<const uint8_t> frame) {
  if (frame.size() < kFrameHeaderSize) {
    return Fail(Status::InvalidArgument("frame shorter than its header"));
  }
  Result<FrameInfo> info = ParseFrameHeader(frame.first(kFrameHeaderSize));
  if (!info.ok()) return Fail(info.status());
  return Append(frame, *info);
}

Status ContainerWriter::Append(std::span<const uint8_t> frame, const FrameInfo& info) {
  if (!error_.ok()) return error_;
  if (finished_) return Fail(Status::InvalidArgument("Append after Finish"));
  ContainerEntry e;
  e.offset = offset_;
  e.frame_size = static_cast<uint32_t>(frame.size());
  e.raw_size = info.raw_size;
  e.checksum = info.checksum;
  e.dtype = info.dtype;
  e.method = info.method;
  e.raw_offset = raw_bytes_;
  // The reader rejects what this would write wrongly: catch it here, where the bug is.
  if (frame.size() != info.frame_size() || frame.size() > UINT32_MAX) {
    return Fail(Status::InvalidArgument("frame size does not match its header"));
  }
  if (const char* why = CheckEntrySizes(e)) return Fail(Status::InvalidArgument(why));
  Status agree = CheckFrameAgainstEntry(frame, e);
  if (!agree.ok()) return Fail(Status::InvalidArgument("FrameInfo disagrees with the frame"));
  Status s = Write(frame);
  if (!s.ok()) return Fail(s);
  entries_.push_back(e);
  offset_ += frame.size();
  raw_bytes_ += info.raw_size;
  return Status::Ok();
}

Status ContainerWriter::Finish() {
  if (!error_.ok()) return error_;
  if (finished_) return Fail(Status::InvalidArgument("Finish called twice"));
  finished_ = true;
  std::vector<uint8_t> table(entries_.size() * kContainerEntrySize);
  for (size_t i = 0; i < entries_.size(); ++i) {
    EncodeEntry(entries_[i], table.data() + i * kContainerEntrySize);
  }
  Footer f;
  f.entry_count = entries_.size();
  f.table_offset = offset_;
  f.total_raw_size = raw_bytes_;
  f.table_checksum = Checksum(table);
  uint8_t footer[kContainerFooterSize];
  EncodeFooter(f, footer);
  Status s = Write(table);
  if (s.ok()) s = Write(footer);
  if (s.ok()) s = Flush();
  if (!s.ok()) return Fail(s);
  offset_ += table.size() + kContainerFooterSize;
  if (owned_fd_.valid() && ::close(owned_fd_.Release()) != 0) {
    return Fail(Status::FromErrno(errno, "close"));
  }
  return Status::Ok();
}

// ---- ContainerReader -------------------------------------------------------------------------

ContainerReader::ContainerReader(UniqueFd fd, ContainerIndex index)
    : fd_(std::move(fd)), index_(std::move(index)), decoder_(std::make_unique<FrameDecoder>()) {}

ContainerReader::ContainerReader(ContainerReader&&) noexcept = default;
ContainerReader& ContainerReader::operator=(ContainerReader&&) noexcept = default;
ContainerReader::~ContainerReader() = default;

Result<ContainerReader> ContainerReader::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not hang before the regular-file check (no effect on files).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Status::FromErrno(errno, path);
  return OpenFd(UniqueFd(fd));
}

Result<ContainerReader> ContainerReader::OpenFd(UniqueFd fd) {
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat");
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  uint8_t header[kContainerHeaderSize] = {};
  ZIPNN_RETURN_IF_ERROR(
      PreadFull(fd.get(), 0, {header, std::min<uint64_t>(file_size, sizeof header)}));
  ZIPNN_RETURN_IF_ERROR(
      CheckHeader({header, std::min<uint64_t>(file_size, sizeof header)}, file_size));
  uint8_t footer_bytes[kContainerFooterSize];
  ZIPNN_RETURN_IF_ERROR(PreadFull(fd.get(), file_size - kContainerFooterSize, footer_bytes));
  Result<Footer> footer = ParseFooter(footer_bytes, file_size);
  if (!footer.ok()) return footer.status();
  // Bounded by the file's size: ParseFooter capped the count.
  std::vector<uint8_t> table(footer->entry_count * kContainerEntrySize);
  ZIPNN_RETURN_IF_ERROR(PreadFull(fd.get(), footer->table_offset, table));
  Result<ContainerIndex> index = ParseTable(table, *footer, file_size);
  if (!index.ok()) return index.status();
  return ContainerReader(std::move(fd), std::move(*index));
}

size_t ContainerReader::FrameAt(uint64_t raw_offset) const {
  auto it = std::partition_point(
      index_.entries.begin(), index_.entries.end(),
      [raw_offset](const ContainerEntry& e) { return e.raw_offset + e.raw_size <= raw_offset; });
  return static_cast<size_t>(it - index_.entries.begin());
}

Status ContainerReader::ReadFrame(size_t i, std::vector<uint8_t>& frame) const {
  return ReadFrames(i, 1, frame);
}

Status ContainerReader::ReadFrames(size_t first, size_t count, std::vector<uint8_t>& buf) const {
  const auto& entries = index_.entries;
  if (first > entries.size() || count > entries.size() - first) {
    return Status::InvalidArgument("frame index out of range");
  }
  if (count == 0) {
    buf.clear();
    return Status::Ok();
  }
  const uint64_t begin = entries[first].offset;
  const ContainerEntry& last = entries[first + count - 1];
  buf.resize(last.offset + last.frame_size - begin);
  ZIPNN_RETURN_IF_ERROR(PreadFull(fd_.get(), begin, buf));
  for (size_t k = first; k < first + count; ++k) {
    const ContainerEntry& e = entries[k];
    ZIPNN_RETURN_IF_ERROR(
        CheckFrameAgainstEntry(std::span<const uint8_t>(buf).subspan(e.offset - begin), e));
  }
  return Status::Ok();
}

Status ContainerReader::DecodeFrame(size_t i, std::span<uint8_t> out) {
  if (i >= index_.entries.size()) return Status::InvalidArgument("frame index out of range");
  if (out.size() != index_.entries[i].raw_size) {
    return Status::InvalidArgument("output size differs from the frame's raw size");
  }
  ZIPNN_RETURN_IF_ERROR(ReadFrame(i, frame_buf_));
  return decoder_->Decode(frame_buf_, out);
}

Status ContainerReader::ReadRangeInto(uint64_t offset, std::span<uint8_t> out) {
  if (offset > index_.total_raw_size || out.size() > index_.total_raw_size - offset) {
    return Status::InvalidArgument("range outside the original file");
  }
  if (out.empty()) return Status::Ok();
  const auto& entries = index_.entries;
  const uint64_t end = offset + out.size();
  uint64_t pos = offset;
  size_t i = FrameAt(offset);
  while (pos < end) {
    // Read the next run of touched frames with one read of at most kRangeReadBatch bytes.
    const uint64_t base = entries[i].offset;
    size_t run_end = i + 1;
    while (run_end < entries.size() && entries[run_end].raw_offset < end &&
           entries[run_end].offset + entries[run_end].frame_size - base <= kRangeReadBatch) {
      ++run_end;
    }
    ZIPNN_RETURN_IF_ERROR(ReadFrames(i, run_end - i, frame_buf_));
    for (; i < run_end; ++i) {
      const ContainerEntry& e = entries[i];
      if (e.raw_size == 0) continue;
      auto frame = std::span<const uint8_t>(frame_buf_).subspan(e.offset - base, e.frame_size);
      const uint64_t within = pos - e.raw_offset;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(e.raw_size - within, end - pos));
      std::span<uint8_t> dst = out.subspan(pos - offset, n);
      if (n == e.raw_size) {
        ZIPNN_RETURN_IF_ERROR(decoder_->Decode(frame, dst));
      } else {  // only part of the frame is wanted: decode it aside
        raw_buf_.resize(e.raw_size);
        ZIPNN_RETURN_IF_ERROR(decoder_->Decode(frame, raw_buf_));
        std::memcpy(dst.data(), raw_buf_.data() + within, n);
      }
      pos += n;
    }
  }
  return Status::Ok();
}

Status ContainerReader::ReadRange(uint64_t offset, uint64_t length, std::vector<uint8_t>& out) {
  const uint64_t total = index_.total_raw_size;
  const uint64_t n = offset >= total ? 0 : std::min(length, total - offset);
  out.resize(n);
  return ReadRangeInto(std::min(offset, total), out);
}

std::optional<uint64_t> ParseDecimal(std::string_view s) {
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<uint64_t> ParseSize(std::string_view s) {
  uint64_t value = 0;
  size_t i = 0;
  for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
    const uint64_t digit = static_cast<uint64_t>(s[i] - '0');
    if (value > (UINT64_MAX - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  if (i == 0) return std::nullopt;
  std::string suffix;
  for (; i < s.size(); ++i)
    suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(s[i])));
  int shift = 0;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'B':
        shift = 0;
        break;
      default:
        return std::nullopt;
    }
    std::string_view rest = std::string_view(suffix).substr(suffix[0] == 'B' ? 0 : 1);
    if (!rest.empty() && rest != "B" && rest != "IB") return std::nullopt;
  }
  if (value > (UINT64_MAX >> shift)) return std::nullopt;
  return value << shift;
}

}  // namespace zipnn
