// The frame format, shared by the encoder (frame_encoder.cc) and the decoder (frame.cc); internal
// to codec/.
//
// Header (32 bytes, little-endian): "ZNF" version u8 | method u8 | dtype u8 | flags u8 | 0 u8 |
// raw_size u32 | payload_size u32 | XXH3-64 of the raw bytes u64 | 0 u32 | low 32 bits of the
// XXH3-64 of bytes 0..27. Version 2 is written; version 1 (Huffman lane sizes as u32s, no flags)
// is still read.
//
// Grouped payload: u8 stream count, then per stream u8 coding + varint length, then the streams'
// bytes in order, then the chunk's trailing partial element, raw. With flag kFlagJoint (BF16
// only): u8 k, u16 base, varint escape count E, the symbol stream (u8 coding + varint length +
// bytes), the raw bit planes, E u16 escapes, the trailing byte (see joint_bf16.h).
#pragma once

#include <cstdint>

namespace zipnn::internal {

inline constexpr uint8_t kFrameMagic[4] = {'Z', 'N', 'F', 2};  // the last byte: version written
inline constexpr uint8_t kOldestFrameVersion = 1;
inline constexpr uint8_t kFlagJoint = 1;
inline constexpr uint8_t kFlagShift = 2;

enum class StreamCoding : uint8_t { kRaw = 0, kZero = 1, kHuffman = 2, kZstd = 3 };

}  // namespace zipnn::internal
