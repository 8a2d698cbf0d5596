// The corpus side of prepare (data/prepare.h): reading the corpus file,
// splitting it into documents, sampling them for tokenizer training and
// choosing the validation documents.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/philox.h"
#include "data/prepare.h"
#include "data/prepare_internal.h"

namespace scalemoe {
namespace {

using prepare_internal::kValSplitStream;

bool IsBlank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v';
  });
}

}  // namespace

namespace prepare_internal {

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("corpus ", path,
                                            ": cannot open; run "
                                            "scripts/corpus.sh ",
                                            path, " to build the default one"));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("corpus ", path, ": read failed"));
  return std::move(buffer).str();
}

}  // namespace prepare_internal

std::vector<std::string_view> SplitCorpusDocuments(std::string_view corpus) {
  std::vector<std::string_view> docs;
  size_t doc_begin = 0;
  size_t line_begin = 0;
  while (line_begin < corpus.size()) {
    size_t line_end = corpus.find('\n', line_begin);
    if (line_end == std::string_view::npos) line_end = corpus.size();
    if (line_end - line_begin == 1 && corpus[line_begin] == kDocumentSeparator) {
      // The newline before the separator line belongs to the separator.
      const size_t end = line_begin > doc_begin ? line_begin - 1 : doc_begin;
      std::string_view doc = corpus.substr(doc_begin, end - doc_begin);
      if (!IsBlank(doc)) docs.push_back(doc);
      doc_begin = std::min(line_end + 1, corpus.size());
    }
    line_begin = line_end + 1;
  }
  std::string_view tail = corpus.substr(doc_begin);
  if (!IsBlank(tail)) docs.push_back(tail);
  return docs;
}

std::string SampleDocuments(const std::vector<std::string_view>& documents, int64_t budget_bytes) {
  int64_t total = 0;
  for (std::string_view d : documents) total += static_cast<int64_t>(d.size());
  std::string sample;
  const bool take_all = total + static_cast<int64_t>(documents.size()) <= budget_bytes;
  int64_t seen = 0;
  for (std::string_view d : documents) {
    seen += static_cast<int64_t>(d.size());
    // Keep the sample's size proportional to how far through the corpus we
    // are, so every part of the corpus contributes.
    const double quota = static_cast<double>(budget_bytes) * static_cast<double>(seen) /
                         static_cast<double>(std::max<int64_t>(total, 1));
    if (take_all || static_cast<double>(sample.size()) < quota) {
      sample.append(d.data(), d.size());
      sample.push_back('\n');
    }
  }
  return sample;
}

bool IsValidationDocument(uint64_t seed, int64_t index, double val_fraction) {
  return PhiloxUniform(seed, kValSplitStream, static_cast<uint64_t>(index)) < val_fraction;
}

}  // namespace scalemoe
