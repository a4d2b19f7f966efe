// Tests of the zipnn command-line tool, run as a separate process like a user would.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "codec/container.h"
#include "tests/tools/cli_util.h"
#include "tools/synth_model.h"

#ifndef ZIPNN_BINARY
#error "ZIPNN_BINARY must name the zipnn executable"
#endif

namespace zipnn::tool {
namespace {

namespace fs = std::filesystem;

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

class ZipnnCliTest : public test::TempDirTest {
 protected:
  test::ToolRun Zipnn(const std::vector<std::string>& args) { return RunTool(ZIPNN_BINARY, args); }

  // Files in the test directory, to check that no temporary file was left behind.
  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string MakeModel(const std::string& name, DType dtype) {
    SynthModelOptions o;
    o.dtype = dtype;
    o.layers = 2;
    o.dim = 192;
    const std::string path = Path(name);
    EXPECT_TRUE(WriteSyntheticSafetensors(path, o).ok());
    return path;
  }

  std::string MakeRandom(const std::string& name, size_t size, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::string bytes(size, '\0');
    for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(rng() % (i % 3 ? 256 : 7));
    WriteAll(Path(name), bytes);
    return Path(name);
  }

  // compress then decompress to a new name; the result must equal the input byte for byte.
  void ExpectRoundTrip(const std::string& input, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{"compress", "-q", input, "-o", input + ".test.znn"};
    args.insert(args.end(), extra.begin(), extra.end());
    test::ToolRun c = Zipnn(args);
    ASSERT_EQ(c.exit_code, 0) << c.err;
    test::ToolRun d = Zipnn({"decompress", "-q", input + ".test.znn", "-o", input + ".restored"});
    ASSERT_EQ(d.exit_code, 0) << d.err;
    EXPECT_TRUE(test::ReadAll(input) == test::ReadAll(input + ".restored")) << input;
    fs::remove(input + ".test.znn");
    fs::remove(input + ".restored");
  }
};

TEST_F(ZipnnCliTest, RoundTripsAreByteExact) {
  ExpectRoundTrip(MakeModel("m.bf16.safetensors", DType::kBF16));
  ExpectRoundTrip(MakeModel("m.f32.safetensors", DType::kF32), {"--threads", "1"});
  ExpectRoundTrip(MakeRandom("random.bin", 1000003, 1), {"--chunk-size", "64K", "--level", "1"});
  ExpectRoundTrip(MakeRandom("tiny.bin", 5, 2));
  ExpectRoundTrip(MakeRandom("empty.bin", 0, 3));
  EXPECT_EQ(Listing().size(), 5u) << "temporary files left";
}

TEST_F(ZipnnCliTest, DefaultNamesAndOverwrite) {
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  const std::string original = test::ReadAll(model);
  test::ToolRun c = Zipnn({"compress", model});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.err.find("m.safetensors.znn"), std::string::npos) << "summary: " << c.err;
  ASSERT_TRUE(fs::exists(model + ".znn"));

  // Existing outputs are refused without -f and left alone.
  const std::string compressed = test::ReadAll(model + ".znn");
  WriteAll(model + ".znn", "precious");
  test::ToolRun again = Zipnn({"compress", model});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("exists"), std::string::npos) << again.err;
  EXPECT_EQ(test::ReadAll(model + ".znn"), "precious");
  test::ToolRun forced = Zipnn({"compress", "-f", "-q", model});
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_EQ(test::ReadAll(model + ".znn"), compressed) << "output is deterministic";

  test::ToolRun d = Zipnn({"decompress", "-q", model + ".znn"});
  EXPECT_EQ(d.exit_code, 1) << "the original is still there";
  EXPECT_EQ(test::ReadAll(model), original);
  fs::remove(model);
  d = Zipnn({"decompress", "-q", model + ".znn"});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_TRUE(test::ReadAll(model) == original);
  // Not even -f writes a file's other form over the file itself (by its name or a link's).
  fs::create_symlink("m.safetensors", Path("link"));
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"compress", "-f", model, "-o", model},
           {"compress", "-f", model, "-o", Path("link")},
           {"decompress", "-f", model + ".znn", "-o", model + ".znn"}}) {
    test::ToolRun same = Zipnn(args);
    EXPECT_EQ(same.exit_code, 1) << args[0];
    EXPECT_NE(same.err.find("is the input file itself"), std::string::npos) << same.err;
  }
  EXPECT_TRUE(test::ReadAll(model) == original);
  EXPECT_EQ(test::ReadAll(model + ".znn"), compressed);
  fs::remove(Path("link"));
  EXPECT_EQ(Listing(), (std::vector<std::string>{"m.safetensors", "m.safetensors.znn"}));
}

// Killed with SIGKILL while it writes, compress leaves no file behind, under any name: its
// output is unnamed until complete (30 such kills left 2.2 GB of temporary files before).
TEST_F(ZipnnCliTest, KillNineLeavesNothingBehind) {
  SynthModelOptions o;
  o.layers = 4;
  o.dim = 1024;  // ~30 MB: long enough to be caught writing
  const std::string model = Path("big.safetensors"), out_dir = Path("out");
  ASSERT_TRUE(WriteSyntheticSafetensors(model, o).ok());
  fs::create_directories(out_dir);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl(ZIPNN_BINARY, ZIPNN_BINARY, "compress", "-q", "--threads", "1", model.c_str(), "-o",
            (out_dir + "/big.znn").c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Until it holds its output open with bytes in it.
  const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
  bool writing = false;
  for (int i = 0; i < 20000 && !writing; ++i) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fds, ec)) {
      const std::string target = fs::read_symlink(e.path(), ec).string();
      struct stat st;
      if (target.starts_with(out_dir + "/") && ::stat(e.path().c_str(), &st) == 0 && st.st_size > 0)
        writing = true;
    }
    if (!writing) ::usleep(100);
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(writing) << "never saw it writing";
  ASSERT_TRUE(WIFSIGNALED(status)) << "it finished before the kill";
  EXPECT_TRUE(fs::is_empty(out_dir)) << fs::directory_iterator(out_dir)->path();
}

// A device or a pipe as the output is written in place: renaming a temporary file over it would
// replace the device node (as root, `-o /dev/null -f` once turned /dev/null into a file).
TEST_F(ZipnnCliTest, DevicesAndPipesAreWrittenInPlace) {
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  const std::string original = test::ReadAll(model);
  ASSERT_EQ(Zipnn({"compress", "-q", model}).exit_code, 0);
  const std::string null_dev = Path("null");  // a /dev/null of our own (needs root)
  if (::mknod(null_dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) {
    for (const char* cmd : {"compress", "decompress"}) {
      const std::string in = std::string(cmd) == "compress" ? model : model + ".znn";
      test::ToolRun r = Zipnn({cmd, "-q", "-f", in, "-o", null_dev});
      EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.err;
      struct stat st;
      ASSERT_EQ(::stat(null_dev.c_str(), &st), 0);
      EXPECT_TRUE(S_ISCHR(st.st_mode)) << cmd << " replaced the device with a file";
    }
  } else {
    std::printf("note: mknod refused (not root?): device output not tested\n");
  }
  // A pipe takes the bytes in order (no positional writes), and no -f is needed.
  const std::string fifo = Path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string piped;
  std::thread reader([&] { piped = test::ReadAll(fifo); });
  test::ToolRun d = Zipnn({"decompress", "-q", model + ".znn", "-o", fifo, "--threads", "2"});
  // If the tool never opened the pipe, the reader still waits in open(): a writer end releases it.
  const int release = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
  if (release >= 0) ::close(release);
  reader.join();
  EXPECT_EQ(d.exit_code, 0) << d.err;
  EXPECT_TRUE(piped == original) << "bytes through a pipe differ";
}

// `-o /dev/stdout` with stdout redirected to a file (as RunTool does) writes through the
// redirection. It used to be taken for an existing file: refused without -f, and with -f (as
// root) a temporary file was renamed over the system's /dev/stdout symlink, leaving the
// redirected file empty. (Never run with -f here: before the fix that replaced /dev/stdout.)
// "-o -" is stdout too, as for curl and tar (it created a file named "-").
TEST_F(ZipnnCliTest, DevStdoutRedirectedToAFileGetsTheBytes) {
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  const std::string original = test::ReadAll(model);
  for (const char* stdout_name : {"/dev/stdout", "-"}) {
    test::ToolRun c = Zipnn({"compress", "-q", model, "-o", stdout_name});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    WriteAll(Path("m.znn"), c.out);
    test::ToolRun d = Zipnn({"decompress", "-q", Path("m.znn"), "-o", stdout_name});
    ASSERT_EQ(d.exit_code, 0) << d.err;
    EXPECT_TRUE(d.out == original) << "bytes through " << stdout_name << " differ";
  }
  EXPECT_TRUE(fs::is_symlink("/dev/stdout")) << "/dev/stdout was replaced";
  // A descriptor that is not open is an error, not a name to create.
  test::ToolRun closed = Zipnn({"decompress", "-q", Path("m.znn"), "-o", "/dev/fd/97"});
  EXPECT_EQ(closed.exit_code, 1);
  EXPECT_NE(closed.err.find("/dev/fd/97"), std::string::npos) << closed.err;
  EXPECT_EQ(Listing(), (std::vector<std::string>{"m.safetensors", "m.znn"}));
}

// A sparse input (a model preallocated with truncate, say) is read without reading its holes,
// and its zeros come back as holes, not as written blocks (6 GiB of holes took 20 s to write).
TEST_F(ZipnnCliTest, HolesStayHoles) {
  constexpr off_t kSize = off_t{64} << 20;
  const std::string sparse = Path("sparse.bin");
  {
    std::string data(5000, 'x');
    UniqueFd fd(::open(sparse.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), kSize), 0);
    for (off_t at : {off_t{0}, kSize / 2 + 12345, kSize - 5000})
      ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), at), 5000);
  }
  test::ToolRun c = Zipnn({"compress", "-q", sparse, "-o", Path("s.znn")});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  test::ToolRun d = Zipnn({"decompress", "-q", Path("s.znn"), "-o", Path("restored")});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_TRUE(test::ReadAll(sparse) == test::ReadAll(Path("restored")));
  struct stat st;
  ASSERT_EQ(::stat(Path("restored").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, kSize);
  EXPECT_LT(st.st_blocks * 512, kSize / 8) << "the zeros were written out";
  // A file that ends in a hole keeps its size (nothing is written there to make it).
  {
    UniqueFd fd(::open(sparse.c_str(), O_WRONLY | O_TRUNC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::pwrite(fd.get(), "hello", 5, 0), 5);
    ASSERT_EQ(::ftruncate(fd.get(), kSize), 0);
  }
  ASSERT_EQ(Zipnn({"compress", "-q", "-f", sparse, "-o", Path("s.znn")}).exit_code, 0);
  ASSERT_EQ(Zipnn({"decompress", "-q", "-f", Path("s.znn"), "-o", Path("restored")}).exit_code, 0);
  ASSERT_EQ(::stat(Path("restored").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, kSize);
  EXPECT_TRUE(test::ReadAll(sparse) == test::ReadAll(Path("restored")));
}

// Outputs whose names are up to NAME_MAX (255) bytes long: the temporary file's name, the
// output's plus ".tmp.XXXXXX", used to exceed it ("File name too long" for a valid name).
TEST_F(ZipnnCliTest, LongestFileNamesWork) {
  const std::string original = test::ReadAll(MakeModel("m.safetensors", DType::kBF16));
  const std::string name = Path(std::string(251, 'n'));
  WriteAll(name, original);
  test::ToolRun c = Zipnn({"compress", "-q", name});  // -> 255 bytes with ".znn"
  ASSERT_EQ(c.exit_code, 0) << c.err;
  fs::remove(name);
  test::ToolRun d = Zipnn({"decompress", "-q", name + ".znn", "-o", name + "xyzw"});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_TRUE(test::ReadAll(name + "xyzw") == original);
  EXPECT_EQ(Listing().size(), 3u) << "temporary files left";
}

// synth keeps an existing file unless -f (refused up front), and a model too large for memory is an
// error, not an abort (it is built in memory; it used to replace any file and die of
// std::bad_alloc).
TEST_F(ZipnnCliTest, SynthKeepsExistingFilesAndFailsCleanlyWhenTooLarge) {
  WriteAll(Path("precious"), "precious");
  test::ToolRun kept = Zipnn({"synth", Path("precious"), "--layers", "1", "--dim", "8"});
  EXPECT_EQ(kept.exit_code, 1);
  EXPECT_NE(kept.err.find("exists"), std::string::npos) << kept.err;
  EXPECT_EQ(test::ReadAll(Path("precious")), "precious");
  test::ToolRun forced = Zipnn({"synth", "-f", Path("precious"), "--layers", "1", "--dim", "8"});
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_NE(test::ReadAll(Path("precious")), "precious");
  // A device is written to, as by compress, without -f.
  test::ToolRun to_null = Zipnn({"synth", "/dev/null", "--layers", "1", "--dim", "8"});
  EXPECT_EQ(to_null.exit_code, 0) << to_null.err;
  // "-" is stdout, as for compress and decompress (it made a file named "-").
  test::ToolRun to_stdout = Zipnn({"synth", "-", "--layers", "1", "--dim", "8"});
  EXPECT_EQ(to_stdout.exit_code, 0) << to_stdout.err;
  EXPECT_GT(to_stdout.out.size(), 800u);  // (1 layer of dim 8: 864 bytes)
  test::ToolRun huge = Zipnn({"synth", Path("huge"), "--layers", "4096", "--dim", "65536"});
  EXPECT_EQ(huge.exit_code, 1) << huge.err;
  EXPECT_NE(huge.err.find("too large"), std::string::npos) << huge.err;
  // An existing output is refused before any work (it was found only after building the model).
  test::ToolRun huge_kept =
      Zipnn({"synth", Path("precious"), "--layers", "4096", "--dim", "65536"});
  EXPECT_EQ(huge_kept.exit_code, 1);
  EXPECT_NE(huge_kept.err.find("exists"), std::string::npos) << huge_kept.err;
  EXPECT_EQ(Listing(), std::vector<std::string>{"precious"});
}

// A file holding more than its size (a /proc file reports 0; or it grew while read) is an error,
// not a container of what the size said: /proc/version used to compress to an empty original.
TEST_F(ZipnnCliTest, InputLongerThanItsSizeIsAnError) {
  if (!fs::exists("/proc/version") || fs::file_size("/proc/version") != 0)
    GTEST_SKIP() << "no /proc/version of size 0";
  test::ToolRun c = Zipnn({"compress", "-q", "/proc/version", "-o", Path("v.znn")});
  EXPECT_EQ(c.exit_code, 1) << c.err;
  EXPECT_NE(c.err.find("/proc/version"), std::string::npos) << c.err;
  EXPECT_TRUE(Listing().empty()) << "output left";
}

TEST_F(ZipnnCliTest, InputErrors) {
  test::ToolRun missing = Zipnn({"compress", Path("nope.bin")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope.bin"), std::string::npos) << missing.err;
  EXPECT_EQ(Zipnn({"decompress", Path("nope.znn")}).exit_code, 1);
  EXPECT_EQ(Zipnn({"compress", dir_}).exit_code, 1) << "a directory";

  MakeRandom("fake.znn", 10000, 4);
  test::ToolRun fake = Zipnn({"decompress", Path("fake.znn")});
  EXPECT_EQ(fake.exit_code, 1);
  EXPECT_NE(fake.err.find("fake.znn: not a zipnn container"), std::string::npos) << fake.err;
  EXPECT_EQ(Zipnn({"info", Path("fake.znn")}).exit_code, 1);
  EXPECT_EQ(Zipnn({"cat", Path("fake.znn")}).exit_code, 1);

  MakeRandom("plain.bin", 100, 5);
  test::ToolRun suffix = Zipnn({"decompress", Path("plain.bin")});
  EXPECT_EQ(suffix.exit_code, 1);
  EXPECT_NE(suffix.err.find("-o"), std::string::npos) << suffix.err;
  EXPECT_EQ(Listing(), (std::vector<std::string>{"fake.znn", "plain.bin"}));
}

TEST_F(ZipnnCliTest, CorruptContainerLeavesNoOutput) {
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  ASSERT_EQ(Zipnn({"compress", "-q", model}).exit_code, 0);
  fs::remove(model);
  std::string znn = test::ReadAll(model + ".znn");
  znn[znn.size() / 2] ^= 0x10;  // inside a frame payload: only decoding can tell
  WriteAll(model + ".znn", znn);
  test::ToolRun d = Zipnn({"decompress", "-q", model + ".znn"});
  EXPECT_EQ(d.exit_code, 1);
  EXPECT_FALSE(d.err.empty());
  EXPECT_EQ(Listing(), std::vector<std::string>{"m.safetensors.znn"}) << "partial output left";
  znn.resize(znn.size() - 1);
  WriteAll(model + ".znn", znn);
  EXPECT_EQ(Zipnn({"decompress", "-q", model + ".znn"}).exit_code, 1) << "truncated";
}

// A full disk: exit code 1, a message that says so, and no file left, partial or temporary,
// whether the output is written in order (compress) or by many threads at once (decompress).
TEST_F(ZipnnCliTest, FullDiskFailsCleanly) {
  const std::string small = Path("small");
  test::SmallTmpfs tmpfs(small, "1m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a small tmpfs (" << tmpfs.error() << ")";
  const std::string random = MakeRandom("random.bin", 3u << 20, 6);  // stays ~3 MB compressed
  for (const char* threads : {"1", "2", "4"}) {
    test::ToolRun c =
        Zipnn({"compress", "-q", random, "-o", small + "/r.znn", "--threads", threads});
    EXPECT_EQ(c.exit_code, 1) << c.err;
    EXPECT_NE(c.err.find("No space left"), std::string::npos) << c.err;
    EXPECT_NE(c.err.find("r.znn"), std::string::npos) << "names the output: " << c.err;
    ASSERT_EQ(Zipnn({"compress", "-q", random, "-o", random + ".znn", "-f"}).exit_code, 0);
    test::ToolRun d =
        Zipnn({"decompress", "-q", random + ".znn", "-o", small + "/r.bin", "--threads", threads});
    EXPECT_EQ(d.exit_code, 1) << d.err;
    EXPECT_NE(d.err.find("No space left"), std::string::npos) << d.err;
    EXPECT_NE(d.err.find("r.bin"), std::string::npos) << "names the output: " << d.err;
    EXPECT_TRUE(fs::is_empty(small)) << "output left on the full disk";
  }
}

TEST_F(ZipnnCliTest, CatGivesTheBytesOfARange) {
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  const std::string original = test::ReadAll(model);
  ASSERT_EQ(Zipnn({"compress", "-q", "--chunk-size", "16K", model}).exit_code, 0);
  std::mt19937_64 rng(9);
  for (int i = 0; i < 8; ++i) {
    const uint64_t offset = rng() % original.size();
    const uint64_t length = rng() % 100000;
    test::ToolRun r = Zipnn({"cat", model + ".znn", "--offset", std::to_string(offset), "--length",
                             std::to_string(length)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(r.out == original.substr(offset, length)) << offset << "+" << length;
  }
  test::ToolRun all = Zipnn({"cat", model + ".znn"});
  EXPECT_TRUE(all.out == original);
  test::ToolRun k = Zipnn({"cat", model + ".znn", "--offset", "1K", "--length", "1K"});
  EXPECT_TRUE(k.out == original.substr(1024, 1024));
  test::ToolRun past =
      Zipnn({"cat", model + ".znn", "--offset", std::to_string(original.size() + 1)});
  EXPECT_EQ(past.exit_code, 1);
}

TEST_F(ZipnnCliTest, InfoShowsMethodsAndDtypes) {
  const std::string model = MakeModel("m.safetensors", DType::kF32);
  ASSERT_EQ(Zipnn({"compress", "-q", model}).exit_code, 0);
  test::ToolRun r = Zipnn({"info", model + ".znn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| method |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| F32 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| **total** |"), std::string::npos) << r.out;
}

TEST_F(ZipnnCliTest, UsageErrorsExitWithTwo) {
  EXPECT_EQ(Zipnn({}).exit_code, 2);
  EXPECT_EQ(Zipnn({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Zipnn({"compress"}).exit_code, 2);
  EXPECT_EQ(Zipnn({"compress", "x", "--bogus"}).exit_code, 2);
  EXPECT_EQ(Zipnn({"compress", "x", "--chunk-size", "12Q"}).exit_code, 2);
  EXPECT_EQ(Zipnn({"compress", "x", "--chunk-size", "1G"}).exit_code, 2);
  EXPECT_EQ(Zipnn({"compress", "x", "--threads", "-1"}).exit_code, 2);
  // Sizes in range that the codec refuses are usage errors too, found before any file is read.
  const std::string model = MakeModel("m.safetensors", DType::kBF16);
  test::ToolRun odd = Zipnn({"compress", model, "--chunk-size", "4097"});
  EXPECT_EQ(odd.exit_code, 2) << odd.err;
  EXPECT_NE(odd.err.find("multiple of 8"), std::string::npos) << odd.err;
  EXPECT_EQ(Listing(), std::vector<std::string>{"m.safetensors"});
  test::ToolRun unknown = Zipnn({"frob"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("unknown command: frob"), std::string::npos) << unknown.err;
  test::ToolRun help = Zipnn({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("decompress"), std::string::npos);
  test::ToolRun sub = Zipnn({"compress", "--help"});
  EXPECT_EQ(sub.exit_code, 0);
  EXPECT_NE(sub.out.find("--chunk-size"), std::string::npos);
}

TEST_F(ZipnnCliTest, BenchOnGivenFiles) {
  const std::string a = MakeModel("a.safetensors", DType::kBF16);
  const std::string b = MakeModel("b.safetensors", DType::kF32);
  test::ToolRun r = Zipnn({"bench", "--min-time", "0", a, b});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| BF16 | 1 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| F32 | 1 |"), std::string::npos) << r.out;
  // The tensors alone, as the reference figures count: each file's tensor bytes, header left out.
  const size_t tensors = r.out.find("## Speed of the tensors alone");
  ASSERT_NE(tensors, std::string::npos) << r.out;
  for (const auto& [path, dtype] : {std::pair{a, "BF16"}, std::pair{b, "F32"}}) {
    const std::string file = test::ReadAll(path);
    uint64_t header = 0;
    std::memcpy(&header, file.data(), 8);
    char row[64];
    std::snprintf(row, sizeof row, "| %s | %.3f |", dtype, (file.size() - 8 - header) / 1e6);
    EXPECT_NE(r.out.find(row, tensors), std::string::npos) << row << "\n" << r.out;
  }
}

// A corpus directory is searched through its symlinks, each file once: a link back up the tree
// counted one file 41 times, and a dangling link is no error.
TEST_F(ZipnnCliTest, BenchCountsEachCorpusFileOnce) {
  fs::create_directory(Path("corpus"));
  MakeModel("corpus/a.safetensors", DType::kBF16);
  fs::create_directory_symlink(".", Path("corpus/loop"));
  fs::create_symlink("missing.safetensors", Path("corpus/dangling.safetensors"));
  const char* old = ::getenv("ZIPNN_CORPUS");
  const std::string saved = old ? old : "";
  ::setenv("ZIPNN_CORPUS", Path("corpus").c_str(), 1);
  test::ToolRun r = Zipnn({"bench", "--min-time", "0"});
  if (old) {
    ::setenv("ZIPNN_CORPUS", saved.c_str(), 1);
  } else {
    ::unsetenv("ZIPNN_CORPUS");
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| BF16 | 1 |"), std::string::npos) << r.out;
}

TEST_F(ZipnnCliTest, CorpusRoundTrips) {
  const char* env = ::getenv("ZIPNN_CORPUS");
  const fs::path corpus = env && *env ? env : ZIPNN_CORPUS_DIR;
  if (!fs::is_directory(corpus)) GTEST_SKIP() << "no real-weights corpus at " << corpus;
  int files = 0;
  for (const char* sub : {"bf16", "f16", "f32", "fp8"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(corpus / sub, ec)) {
      if (e.path().extension() != ".safetensors") continue;
      const std::string copy = Path(e.path().filename());
      fs::copy_file(e.path(), copy);
      ExpectRoundTrip(copy);
      fs::remove(copy);
      if (++files % 6 == 0) break;  // a few per dtype keep the test quick
    }
  }
  EXPECT_GT(files, 0);
}

}  // namespace
}  // namespace zipnn::tool
