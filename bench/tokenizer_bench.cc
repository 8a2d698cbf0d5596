// Encode throughput of BpeTokenizer on real English text (the fortune
// databases under /usr/share/games/fortunes, else generated text), with
// GPT-2's own files when scripts/fetch_gpt2_tokenizer.sh has put them in the
// build tree, else a tokenizer trained here. One thread.
//   WarmCache: the word -> ids cache already holds the text's words.
//   ColdCache: a freshly loaded tokenizer per pass (load time not counted).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "benchmark/benchmark.h"
#include "data/bpe_tokenizer.h"

namespace scalemoe {
namespace {

constexpr char kFortuneDir[] = "/usr/share/games/fortunes";
const std::string kGpt2Dir = std::string(SCALEMOE_GPT2_DIR) + "/package";

std::string BenchText() {
  std::string text;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(kFortuneDir, error)) {
    const std::string ext = entry.path().extension().string();
    if (!entry.is_regular_file() || ext == ".dat" || ext == ".u8") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    text += content.str();
  }
  if (text.empty()) {  // no fortunes: deterministic pseudo-English
    const char* words[] = {"the", "of", "and", "to", "in", "model", "expert", "token",
                           "router", "is", "a", "scale", "vector", "train", "loss"};
    uint64_t state = 1;
    while (text.size() < (size_t{2} << 20)) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      text += words[(state >> 33) % 15];
      text += (state >> 60) == 0 ? ".\n" : " ";
    }
  }
  return text;
}

const std::string& Text() {
  static const std::string* text = new std::string(BenchText());
  return *text;
}

StatusOr<BpeTokenizer> MakeTokenizer() {
  if (std::filesystem::exists(kGpt2Dir + "/encoder.json")) return BpeTokenizer::Load(kGpt2Dir);
  return BpeTokenizer::Train(std::string_view(Text()).substr(0, 1 << 20), 8192);
}

void Run(benchmark::State& state, bool warm) {
  StatusOr<BpeTokenizer> tokenizer = MakeTokenizer();
  if (!tokenizer.ok()) {
    state.SkipWithError(tokenizer.status().ToString().c_str());
    return;
  }
  if (warm) benchmark::DoNotOptimize(tokenizer->Encode(Text()));
  size_t tokens = 0;
  for (auto _ : state) {
    if (!warm) {
      state.PauseTiming();
      tokenizer = MakeTokenizer();
      state.ResumeTiming();
    }
    const std::vector<int32_t> ids = tokenizer->Encode(Text());
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * Text().size());
  state.counters["text_bytes"] = static_cast<double>(Text().size());
  state.counters["tokens"] = static_cast<double>(tokens);
  state.SetLabel(std::filesystem::exists(kGpt2Dir + "/encoder.json") ? "gpt2" : "trained-8192");
}

void BM_EncodeWarmCache(benchmark::State& state) { Run(state, true); }
void BM_EncodeColdCache(benchmark::State& state) { Run(state, false); }
BENCHMARK(BM_EncodeWarmCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(BM_EncodeColdCache)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace
}  // namespace scalemoe

BENCHMARK_MAIN();
