// make-corpus: writes the deterministic word-count corpus of the peer benchmarks
// (/work/shared/bench/peers/common.py, "Workload D corpus") to stdout, so the mesh's word count
// runs on exactly the text the other systems were measured on.
//
//   make-corpus [--bytes N]     N defaults to 50000000 (the benchmark's TEXT_BYTES)
//
// The recipe, language-independent (common.py's docstring):
//   splitmix64(seed, k) is the k-th output of splitmix64 started at state `seed`:
//     z = seed + (k + 1) * 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//     z = (z ^ (z >> 27)) * 0x94D049BB133111EB; out = z ^ (z >> 31)          (all mod 2^64)
//   vocabulary: 5000 entries; entry w uses r_t = splitmix64(0x5EED, w*11 + t), t = 0..10:
//     length L = 3 + r_0 % 8, letter t (1..L) = 'a' + r_t % 26.
//   text: word j is entry splitmix64(0xD474, j) % 5000, followed by '\n' when (j+1) % 16 == 0,
//     else ' '; the text is the shortest such prefix (whole words with their separators) of at
//     least N bytes (N = 0: empty).
// For N = 50,000,000 that is 50,000,003 bytes, 6,629,832 words, SHA-256
// 8c9d43082de7f6b2e4a32365bf2860d103244145cf9ed5b6ac872ee46cf0469c.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr std::uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr std::uint64_t kSeedVocab = 0x5EED;
constexpr std::uint64_t kSeedText = 0xD474;
constexpr std::uint64_t kVocabSize = 5000;
constexpr std::uint64_t kWordsPerLine = 16;
constexpr std::uint64_t kDefaultBytes = 50'000'000;
constexpr std::size_t kFlushBytes = 1 << 20;

std::uint64_t splitmix64(std::uint64_t seed, std::uint64_t k) {
  std::uint64_t z = seed + (k + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<std::string> makeVocabulary() {
  std::vector<std::string> vocab;
  vocab.reserve(kVocabSize);
  for (std::uint64_t w = 0; w < kVocabSize; ++w) {
    std::uint64_t length = 3 + splitmix64(kSeedVocab, w * 11) % 8;
    std::string word;
    for (std::uint64_t t = 1; t <= length; ++t)
      word.push_back(static_cast<char>('a' + splitmix64(kSeedVocab, w * 11 + t) % 26));
    vocab.push_back(word);
  }
  return vocab;
}

bool writeAll(const std::string& data) {
  return std::fwrite(data.data(), 1, data.size(), stdout) == data.size();
}

int usage(const char* why) {
  std::fprintf(stderr,
               "make-corpus: %s\nusage: make-corpus [--bytes N]   (writes the benchmark's "
               "word-count corpus of at least N bytes, default %llu, to stdout)\n",
               why, static_cast<unsigned long long>(kDefaultBytes));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t target = kDefaultBytes;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    if (arg == "--bytes" && i + 1 < argc) {
      value = argv[++i];
    } else if (arg.rfind("--bytes=", 0) == 0) {
      value = arg.substr(8);
    } else if (arg == "--help" || arg == "-h") {
      usage("writes a deterministic text corpus");
      return 0;
    } else {
      return usage(("unknown argument '" + arg + "'").c_str());
    }
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(value.c_str(), &end, 10);
    if (value.empty() || value[0] == '-' || *end != '\0' || errno != 0)
      return usage(("--bytes wants a decimal number of bytes, not '" + value + "'").c_str());
    target = n;
  }

  const std::vector<std::string> vocab = makeVocabulary();
  std::string buffer;
  buffer.reserve(kFlushBytes + 64);
  std::uint64_t written = 0;
  for (std::uint64_t j = 0; written < target; ++j) {
    const std::string& word = vocab[splitmix64(kSeedText, j) % kVocabSize];
    buffer += word;
    buffer.push_back((j + 1) % kWordsPerLine == 0 ? '\n' : ' ');
    written += word.size() + 1;
    if (buffer.size() >= kFlushBytes) {
      if (!writeAll(buffer)) break;
      buffer.clear();
    }
  }
  if (!writeAll(buffer) || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "make-corpus: cannot write to stdout: %s\n", std::strerror(errno));
    return 1;
  }
  return 0;
}
