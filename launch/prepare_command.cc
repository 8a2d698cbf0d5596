// `scalemoe prepare`: corpus -> tokenizer (optionally trained) -> token shards
// + manifest (data/prepare.h).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "data/prepare.h"
#include "launch/commands.h"

namespace scalemoe {
namespace {

constexpr char kPrepareHelp[] =
    "usage: scalemoe prepare --input CORPUS --out DIR [flags]\n"
    "\n"
    "Tokenizes CORPUS (documents separated by a line holding only the byte 0x1E;\n"
    "scripts/corpus.sh builds the default one) into token shards under DIR, with a\n"
    "validation split of whole documents and DIR/manifest.json.\n"
    "\n"
    "  --input CORPUS              corpus file (required)\n"
    "  --out DIR                   dataset directory (required)\n"
    "  --tokenizer DIR             tokenizer directory (encoder.json + vocab.bpe);\n"
    "                              default: <out>/tokenizer\n"
    "  --train-tokenizer V         train a BPE of V ids on a corpus sample first and\n"
    "                              save it to the tokenizer directory\n"
    "  --tokenizer-sample-bytes N  size of that sample, spread over the corpus\n"
    "                              (default 33554432)\n"
    "  --val-fraction F            fraction of documents for validation (default 0.01)\n"
    "  --shard-tokens N            tokens per shard file (default 16777216)\n"
    "  --seed S                    seed of the validation split (default 42)\n"
    "  --threads N                 encoder threads (default 2)\n";

// Parses "--flag value" and "--flag=value" pairs; every flag takes a value.
bool ParseFlags(const std::vector<std::string>& args, std::map<std::string, std::string>& flags,
                std::string& error) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      error = "unexpected argument '" + a + "'";
      return false;
    }
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      flags[a.substr(2, eq - 2)] = a.substr(eq + 1);
    } else if (i + 1 < args.size()) {
      flags[a.substr(2)] = args[++i];
    } else {
      error = "flag " + a + " needs a value";
      return false;
    }
  }
  return true;
}

int RunPrepare(const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::printf("%s", kPrepareHelp);
      return 0;
    }
  }
  std::map<std::string, std::string> flags;
  std::string error;
  if (!ParseFlags(args, flags, error)) {
    std::fprintf(stderr, "scalemoe prepare: %s\n%s", error.c_str(), kPrepareHelp);
    return 2;
  }
  PrepareOptions o;
  bool ok = true;
  for (const auto& [name, value] : flags) {
    if (name == "input") {
      o.input = value;
    } else if (name == "out") {
      o.out_dir = value;
    } else if (name == "tokenizer") {
      o.tokenizer_dir = value;
    } else if (name == "train-tokenizer") {
      ok = absl::SimpleAtoi(value, &o.train_tokenizer_vocab);
    } else if (name == "tokenizer-sample-bytes") {
      ok = absl::SimpleAtoi(value, &o.tokenizer_sample_bytes);
    } else if (name == "val-fraction") {
      ok = absl::SimpleAtod(value, &o.val_fraction);
    } else if (name == "shard-tokens") {
      ok = absl::SimpleAtoi(value, &o.shard_tokens);
    } else if (name == "seed") {
      ok = absl::SimpleAtoi(value, &o.seed);
    } else if (name == "threads") {
      ok = absl::SimpleAtoi(value, &o.threads);
    } else {
      std::fprintf(stderr, "scalemoe prepare: unknown flag --%s (see --help)\n", name.c_str());
      return 2;
    }
    if (!ok) {
      std::fprintf(stderr, "scalemoe prepare: --%s: '%s' is not a number\n", name.c_str(),
                   value.c_str());
      return 2;
    }
  }
  if (o.tokenizer_dir.empty() && !o.out_dir.empty()) o.tokenizer_dir = o.out_dir + "/tokenizer";

  StatusOr<PrepareSummary> result = PrepareDataset(o);
  if (!result.ok()) {
    std::fprintf(stderr, "scalemoe prepare: %s\n", result.status().ToString().c_str());
    return result.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  const PrepareSummary& s = *result;
  const int64_t tokens = s.train_tokens + s.val_tokens;
  std::printf(
      "prepare: %s (%.1f MB) -> %s\n"
      "  documents %lld (train %lld, val %lld), vocab %d\n"
      "  tokens %lld (train %lld, val %lld), %lld shards, %.2f bytes/token\n"
      "  tokenizer training %.1f s, encoding %.1f s (%.0f tokens/s), total %.1f s\n",
      o.input.c_str(), s.corpus_bytes / 1e6, o.out_dir.c_str(), static_cast<long long>(s.documents),
      static_cast<long long>(s.train_documents), static_cast<long long>(s.val_documents),
      s.vocab_size, static_cast<long long>(tokens), static_cast<long long>(s.train_tokens),
      static_cast<long long>(s.val_tokens), static_cast<long long>(s.shards),
      tokens > 0 ? static_cast<double>(s.corpus_bytes) / static_cast<double>(tokens) : 0.0,
      s.tokenizer_train_seconds, s.encode_seconds,
      s.encode_seconds > 0 ? static_cast<double>(tokens) / s.encode_seconds : 0.0, s.total_seconds);
  return 0;
}

}  // namespace

Subcommand PrepareCommand() {
  return Subcommand{"prepare", "tokenize a corpus into token shards (+ train a BPE tokenizer)",
                    RunPrepare};
}

}  // namespace scalemoe
