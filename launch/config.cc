// Config loading: text-format parsing with positioned errors, `--set`
// overrides by reflection, and printing the resolved config.
#include "launch/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace scalemoe {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

bool IsIdentChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

// The field an error at (line, column) belongs to: the last `name:` or
// `name {` at or before the column on that line. The parser's own messages
// name unknown fields but not the field whose value is bad, hence this.
std::string FieldNearColumn(const std::string& line, int column) {
  const size_t end = std::min(line.size(), static_cast<size_t>(std::max(column, 0)) + 1);
  std::string best;
  for (size_t i = 0; i < end; ++i) {
    if (!IsIdentChar(line[i]) || (i > 0 && IsIdentChar(line[i - 1]))) continue;
    size_t j = i;
    while (j < line.size() && IsIdentChar(line[j])) ++j;
    size_t k = j;
    while (k < line.size() && (line[k] == ' ' || line[k] == '\t')) ++k;
    if (k < line.size() && (line[k] == ':' || line[k] == '{')) best = line.substr(i, j - i);
  }
  if (!best.empty()) return best;
  // An unknown field's error points at its name, which has no ':' yet when
  // the line is malformed; take the identifier under the column.
  size_t i = std::min(line.size(), static_cast<size_t>(std::max(column, 0)));
  size_t j = i;
  while (j < line.size() && IsIdentChar(line[j])) ++j;
  return line.substr(i, j - i);
}

// Collects parser errors as "source:line:col: field 'f': message" (1-based).
class PositionedErrors : public google::protobuf::io::ErrorCollector {
 public:
  PositionedErrors(const std::string& source_name, const std::string& text)
      : source_name_(source_name), lines_(absl::StrSplit(text, '\n')) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    const std::string text_line =
        line >= 0 && static_cast<size_t>(line) < lines_.size() ? lines_[line] : "";
    const std::string field = FieldNearColumn(text_line, column);
    messages_.push_back(message);
    errors_.push_back(absl::StrCat(source_name_, ":", line + 1, ":", column + 1, ": ",
                                   field.empty() ? "" : absl::StrCat("field '", field, "': "),
                                   message));
  }

  std::string Joined() const { return absl::StrJoin(errors_, "\n"); }
  // The parser's messages alone, for one-line inputs where a position says nothing.
  std::string Messages() const { return absl::StrJoin(messages_, "; "); }

 private:
  std::string source_name_;         // file path or "--set ..." for overrides
  std::vector<std::string> lines_;  // the parsed text, to find field names
  std::vector<std::string> errors_;
  std::vector<std::string> messages_;
};

std::string FieldNames(const Descriptor* d) {
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string EnumNames(const EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) names.push_back(e->value(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string TypeName(const FieldDescriptor* f) {
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) return f->message_type()->name();
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) return f->enum_type()->name();
  return f->type_name();
}

// Sets `field` of `msg` from `value` by parsing "name: value" into a scratch
// message of the same type with the text-format parser (so every type
// parses exactly as in a preset file), then moving that one field over.
Status SetField(Message* msg, const FieldDescriptor* field, const std::string& value,
                const std::string& path) {
  std::string literal = value;
  const bool quoted = !value.empty() && (value[0] == '"' || value[0] == '\'');
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_STRING && !field->is_repeated() && !quoted) {
    literal = absl::StrCat("\"", absl::CEscape(value), "\"");
  }
  // Enum values are upper case in scalemoe.proto; accept `mode=per_branch`.
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) literal = absl::AsciiStrToUpper(value);
  const std::string text = absl::StrCat(field->name(), ": ", literal);
  std::unique_ptr<Message> scratch(msg->New());
  PositionedErrors errors("--set", text);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  // An empty value is an empty string for string fields, a mistake otherwise.
  const bool missing = value.empty() && field->cpp_type() != FieldDescriptor::CPPTYPE_STRING;
  if (missing || !parser.ParseFromString(text, scratch.get())) {
    std::string hint;
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {
      hint = absl::StrCat("; valid values: ", EnumNames(field->enum_type()));
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_BOOL) {
      hint = "; use true or false";
    } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      hint = absl::StrCat("; give a message in braces, e.g. ", path, "={",
                          field->message_type()->field(0)->name(), ": ...}");
    }
    if (field->is_repeated()) hint += absl::StrCat("; a list is written ", path, "=[x, y]");
    return absl::InvalidArgumentError(absl::StrCat(
        "--set ", path, "=", value, ": bad value for ", field->is_repeated() ? "repeated " : "",
        TypeName(field), " field ", path, ": ", missing ? "empty value" : errors.Messages(), hint));
  }
  msg->GetReflection()->ClearField(msg, field);
  msg->MergeFrom(*scratch);
  return absl::OkStatus();
}

// Writes out every unset singular field as its default, recursively.
void FillDefaults(Message* msg) {
  const Descriptor* d = msg->GetDescriptor();
  const Reflection* r = msg->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->containing_oneof() != nullptr) continue;  // setting one would pick a case
    if (f->is_repeated()) {
      if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
      for (int j = 0; j < r->FieldSize(*msg, f); ++j) {
        FillDefaults(r->MutableRepeatedMessage(msg, f, j));
      }
      continue;
    }
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_MESSAGE:
        FillDefaults(r->MutableMessage(msg, f));
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(msg, f, r->GetInt32(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(msg, f, r->GetInt64(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(msg, f, r->GetUInt32(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(msg, f, r->GetUInt64(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(msg, f, r->GetDouble(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(msg, f, r->GetFloat(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(msg, f, r->GetBool(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(msg, f, r->GetEnum(*msg, f));
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        r->SetString(msg, f, r->GetString(*msg, f));
        break;
    }
  }
}

}  // namespace

StatusOr<config::RunConfig> ParseConfigText(const std::string& text,
                                            const std::string& source_name) {
  config::RunConfig config;
  PositionedErrors errors(source_name, text);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot parse config ", source_name,
                                                   " (fields are listed in "
                                                   "configs/scalemoe.proto):\n",
                                                   errors.Joined()));
  }
  return config;
}

Status ApplyOverride(const std::string& assignment, config::RunConfig* config) {
  const size_t eq = assignment.find('=');
  const std::string path = eq == std::string::npos
                               ? ""
                               : std::string(absl::StripAsciiWhitespace(assignment.substr(0, eq)));
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--set '", assignment, "': expected path.to.field=value, e.g. --set model.num_layers=8"));
  }
  const std::string value(absl::StripAsciiWhitespace(assignment.substr(eq + 1)));
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  Message* msg = config;
  std::string walked;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Descriptor* d = msg->GetDescriptor();
    const FieldDescriptor* f = d->FindFieldByName(parts[i]);
    const std::string here = walked.empty() ? parts[i] : absl::StrCat(walked, ".", parts[i]);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--set ", path, ": unknown field '", here, "'; valid fields ",
          walked.empty() ? "at the top level" : absl::StrCat("of ", walked), ": ", FieldNames(d)));
    }
    if (i + 1 == parts.size()) return SetField(msg, f, value, here);
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--set ", path, ": '", here, "' is a ", f->is_repeated() ? "repeated " : "", TypeName(f),
          " field with no sub-field '", parts[i + 1], "'; set it whole with --set ", here, "=..."));
    }
    msg = msg->GetReflection()->MutableMessage(msg, f);
    walked = here;
  }
  return absl::OkStatus();
}

StatusOr<config::RunConfig> LoadConfig(const std::string& path,
                                       const std::vector<std::string>& overrides) {
  // A directory opens as an empty stream, which parses as the all-defaults
  // config: refuse anything that is not a regular file before reading.
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
    const bool dir = std::filesystem::is_directory(path, ec);
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, " is ", dir ? "a directory" : "not a regular file",
                     ", not a text-format config file: pass a file such as "
                     "configs/tiny_cpu.textproto"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        "cannot open config ", path, ": check the path (presets are in configs/*.textproto)"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  SM_ASSIGN_OR_RETURN(config::RunConfig config, ParseConfigText(buffer.str(), path));
  for (const std::string& o : overrides) SM_RETURN_IF_ERROR(ApplyOverride(o, &config));
  return config;
}

std::string ConfigToText(const config::RunConfig& config) {
  config::RunConfig full = config;
  FillDefaults(&full);
  google::protobuf::TextFormat::Printer printer;
  printer.SetUseShortRepeatedPrimitives(true);
  std::string text;
  printer.PrintToString(full, &text);
  return text;
}

}  // namespace scalemoe
