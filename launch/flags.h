// Flag parsing shared by the subcommands: "--flag value", "--flag=value",
// boolean "--flag", repeatable flags, and "--help"/"-h".
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

struct FlagSpec {
  std::string name;         // without dashes: "config"
  bool takes_value = true;  // false: a boolean switch
  bool repeated = false;    // may be given more than once (--set)
};

class ParsedFlags {
 public:
  bool help = false;
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The (last) value, or `fallback` when absent.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // Every value of a repeated flag, in order.
  std::vector<std::string> All(const std::string& name) const;
  // Integer value; an error naming the flag when it is not an integer.
  StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;

 private:
  friend StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>&,
                                          const std::vector<FlagSpec>&);
  std::map<std::string, std::vector<std::string>> values_;
};

// Unknown flags, positional arguments, missing values and repeats of a
// non-repeated flag are InvalidArgument errors naming the argument.
StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                 const std::vector<FlagSpec>& specs);

}  // namespace scalemoe
