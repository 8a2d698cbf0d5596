// Shared by the sweep tests that run `scalemoe sweep` end to end: running a
// command, a tiny sweep spec over the tiny test dataset, reading results.csv.
// SCALEMOE_BINARY (set by tests/launch/CMakeLists.txt) is the built binary.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace scalemoe::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell, capturing its output.
inline CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) result.output.append(buf, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

inline std::string Scalemoe() { return SCALEMOE_BINARY; }

inline std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A sweep spec over tiny_cpu shrunk to 2 layers of width 16, sequences of
// 32, 8 steps of 4 sequences with a checkpoint every 2 (about a second a
// point), on the dataset `dataset_dir`; `rest` adds axes and rules.
inline std::string TinySweepSpec(const std::string& dataset_dir, const std::string& rest) {
  return "base_config: \"configs/tiny_cpu.textproto\"\n"
         "set: [\"model.num_layers=2\", \"model.hidden_size=16\", \"model.num_heads=2\",\n"
         "      \"model.num_kv_heads=1\", \"model.vocab_size=320\", \"model.seq_length=32\",\n"
         "      \"moe.num_experts=4\", \"moe.top_k=2\", \"moe.expert_ffn_hidden_size=16\",\n"
         "      \"train.micro_batch_size=2\", \"train.global_batch_size=4\",\n"
         "      \"train.train_steps=8\", \"train.eval_interval=4\", \"train.eval_batches=2\",\n"
         "      \"schedule.warmup_steps=2\", \"logging.log_interval=1\",\n"
         "      \"checkpoint.interval=2\", \"checkpoint.keep_last=0\",\n"
         "      \"data.dataset_dir=" +
         dataset_dir + "\"]\n" + rest;
}

// results.csv as one map (column -> cell) per row.
inline std::vector<std::map<std::string, std::string>> ReadCsv(const std::filesystem::path& path) {
  std::vector<std::map<std::string, std::string>> rows;
  std::istringstream in(ReadText(path));
  std::string line;
  std::vector<std::string> header;
  if (std::getline(in, line)) header = absl::StrSplit(line, ',');
  while (std::getline(in, line)) {
    const std::vector<std::string> cells = absl::StrSplit(line, ',');
    EXPECT_EQ(cells.size(), header.size()) << line;
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size() && i < cells.size(); ++i) row[header[i]] = cells[i];
    rows.push_back(row);
  }
  return rows;
}

}  // namespace scalemoe::testing
