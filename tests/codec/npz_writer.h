// NpzWriter: NumPy .npz archives for tests and fuzz seeds, laid out as np.savez writes them
// (stored members, a zip64 extra field in each local header), optionally with zip64 end
// records and central directory fields as archives over 4 GiB have them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zipnn::test {

struct NpzWriter {
  struct Member {
    std::string name;  // "w.npy"
    std::string
        header;  // the .npy dict, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3,), }
    std::vector<uint8_t> data;
    uint16_t method = 0;  // 0 stored; 8 claims deflate (the bytes stay as given)
    bool raw = false;     // data is the whole member (no .npy header added)
  };
  std::vector<Member> members;
  bool zip64 = false;  // central directory fields and end records in their zip64 forms

  static void Put(std::vector<uint8_t>& b, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }

  // The member's bytes: a version 1 .npy header padded to 64 bytes, then the data.
  static std::vector<uint8_t> Npy(const Member& m) {
    if (m.raw) return m.data;
    std::string dict = m.header;
    while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
    dict += '\n';
    std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    Put(b, dict.size(), 2);
    b.insert(b.end(), dict.begin(), dict.end());
    b.insert(b.end(), m.data.begin(), m.data.end());
    return b;
  }

  std::vector<uint8_t> Build() const {
    std::vector<uint8_t> f, cd;
    for (const Member& m : members) {
      const std::vector<uint8_t> body = Npy(m);
      const uint64_t local = f.size();
      Put(f, 0x04034b50, 4);
      Put(f, 20, 2);
      Put(f, 0, 2);
      Put(f, m.method, 2);
      Put(f, 0, 4);  // time, date
      Put(f, 0, 4);  // crc (unchecked here)
      Put(f, body.size(), 4);
      Put(f, body.size(), 4);
      Put(f, m.name.size(), 2);
      Put(f, 20, 2);  // np.savez's zip64 extra: id, length, two sizes
      f.insert(f.end(), m.name.begin(), m.name.end());
      Put(f, 1, 2);
      Put(f, 16, 2);
      Put(f, body.size(), 8);
      Put(f, body.size(), 8);
      f.insert(f.end(), body.begin(), body.end());

      Put(cd, 0x02014b50, 4);
      Put(cd, 0x0314, 2);
      Put(cd, 20, 2);
      Put(cd, 0, 2);
      Put(cd, m.method, 2);
      Put(cd, 0, 4);
      Put(cd, 0, 4);
      Put(cd, zip64 ? 0xffffffff : body.size(), 4);
      Put(cd, zip64 ? 0xffffffff : body.size(), 4);
      Put(cd, m.name.size(), 2);
      Put(cd, zip64 ? 28 : 0, 2);
      Put(cd, 0, 2);  // comment
      Put(cd, 0, 2);  // disk
      Put(cd, 0, 2);  // internal attributes
      Put(cd, 0, 4);  // external attributes
      Put(cd, zip64 ? 0xffffffff : local, 4);
      cd.insert(cd.end(), m.name.begin(), m.name.end());
      if (zip64) {
        Put(cd, 1, 2);
        Put(cd, 24, 2);
        Put(cd, body.size(), 8);
        Put(cd, body.size(), 8);
        Put(cd, local, 8);
      }
    }
    const uint64_t cd_at = f.size();
    f.insert(f.end(), cd.begin(), cd.end());
    if (zip64) {
      const uint64_t rec_at = f.size();
      Put(f, 0x06064b50, 4);
      Put(f, 44, 8);
      Put(f, 45, 2);
      Put(f, 45, 2);
      Put(f, 0, 4);
      Put(f, 0, 4);
      Put(f, members.size(), 8);
      Put(f, members.size(), 8);
      Put(f, cd.size(), 8);
      Put(f, cd_at, 8);
      Put(f, 0x07064b50, 4);
      Put(f, 0, 4);
      Put(f, rec_at, 8);
      Put(f, 1, 4);
    }
    Put(f, 0x06054b50, 4);
    Put(f, 0, 2);
    Put(f, 0, 2);
    Put(f, zip64 ? 0xffff : members.size(), 2);
    Put(f, zip64 ? 0xffff : members.size(), 2);
    Put(f, zip64 ? 0xffffffff : cd.size(), 4);
    Put(f, zip64 ? 0xffffffff : cd_at, 4);
    Put(f, 0, 2);
    return f;
  }
};

}  // namespace zipnn::test
