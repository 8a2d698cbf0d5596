// `scalemoe tokenize`: stdin text -> whitespace-separated token ids on stdout,
// or back with --decode, using a GPT-2 format tokenizer directory.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "data/bpe_tokenizer.h"
#include "launch/commands.h"

namespace scalemoe {
namespace {

constexpr char kTokenizeHelp[] =
    "usage: scalemoe tokenize --tokenizer DIR [--decode] < input > output\n"
    "\n"
    "Encodes stdin (raw bytes) to whitespace-separated token ids on stdout, or with\n"
    "--decode reads whitespace-separated ids from stdin and writes the text.\n"
    "\n"
    "  --tokenizer DIR   directory holding encoder.json and vocab.bpe (GPT-2 format)\n"
    "  --decode          ids -> text instead of text -> ids\n";

int Usage(const std::string& error) {
  std::fprintf(stderr, "scalemoe tokenize: %s\n%s", error.c_str(), kTokenizeHelp);
  return 2;
}

int RunTokenize(const std::vector<std::string>& args) {
  std::string dir;
  bool decode = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s", kTokenizeHelp);
      return 0;
    } else if (a == "--decode") {
      decode = true;
    } else if (a == "--tokenizer" && i + 1 < args.size()) {
      dir = args[++i];
    } else if (a.rfind("--tokenizer=", 0) == 0) {
      dir = a.substr(12);
    } else {
      return Usage(a == "--tokenizer" ? "flag --tokenizer needs a value"
                                      : "unexpected argument '" + a + "'");
    }
  }
  if (dir.empty()) return Usage("--tokenizer DIR is required");
  StatusOr<BpeTokenizer> tokenizer = BpeTokenizer::Load(dir);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "scalemoe tokenize: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::ios::sync_with_stdio(false);
  if (!decode) {
    const std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::string out;
    for (int32_t id : tokenizer->Encode(text)) {
      if (!out.empty()) out.push_back(' ');
      out += std::to_string(id);
    }
    out.push_back('\n');
    std::cout << out;
  } else {
    std::vector<int32_t> ids;
    std::string word;
    while (std::cin >> word) {
      int32_t id;
      if (!absl::SimpleAtoi(word, &id) || id < 0 || id >= tokenizer->vocab_size()) {
        std::fprintf(stderr, "scalemoe tokenize: '%s' on stdin is not a token id of %s (0..%d)\n",
                     word.c_str(), dir.c_str(), tokenizer->vocab_size() - 1);
        return 1;
      }
      ids.push_back(id);
    }
    std::cout << tokenizer->Decode(ids);
  }
  std::cout.flush();
  if (!std::cout) {
    std::fprintf(stderr, "scalemoe tokenize: writing stdout failed\n");
    return 1;
  }
  return 0;
}

}  // namespace

Subcommand TokenizeCommand() {
  return {"tokenize", "encode stdin to token ids (or --decode ids to text)", RunTokenize};
}

}  // namespace scalemoe
