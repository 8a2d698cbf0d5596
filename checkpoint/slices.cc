#include "checkpoint/slices.h"

#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace scalemoe::checkpoint {

Box EntryBox(const TensorEntry& entry) {
  Box box;
  for (const Slice& s : entry.slice()) {
    box.start.push_back(s.start());
    box.size.push_back(s.length());
  }
  return box;
}

const std::string& EntryKey(const TensorEntry& entry) {
  return entry.key().empty() ? entry.name() : entry.key();
}

int64_t Volume(const Box& box) { return NumElements(box.size); }

std::optional<Box> Intersect(const Box& a, const Box& b) {
  if (a.start.size() != b.start.size()) return std::nullopt;
  Box out;
  for (size_t d = 0; d < a.start.size(); ++d) {
    const int64_t lo = std::max(a.start[d], b.start[d]);
    const int64_t hi = std::min(a.start[d] + a.size[d], b.start[d] + b.size[d]);
    if (hi <= lo) return std::nullopt;
    out.start.push_back(lo);
    out.size.push_back(hi - lo);
  }
  return out;
}

std::string BoxString(const Box& box) {
  std::vector<std::string> dims;
  for (size_t d = 0; d < box.start.size(); ++d) {
    dims.push_back(absl::StrCat(box.start[d], ":", box.start[d] + box.size[d]));
  }
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

Status ValidateTiling(const CheckpointManifest& manifest) {
  std::map<std::string, std::vector<const TensorEntry*>> by_name;
  for (const TensorEntry& e : manifest.tensors()) by_name[e.name()].push_back(&e);
  for (const auto& [name, entries] : by_name) {
    const TensorEntry& first = *entries.front();
    const Shape global(first.global_shape().begin(), first.global_shape().end());
    int64_t covered = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      const TensorEntry& e = *entries[i];
      const Shape g(e.global_shape().begin(), e.global_shape().end());
      if (g != global || e.dtype() != first.dtype() || e.role() != first.role()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", name, "': ", e.file(), " stores it as ", e.dtype(), ShapeString(g),
            " but ", first.file(), " as ", first.dtype(), ShapeString(global),
            " (or with another role); every rank must save the same global tensor"));
      }
      const Box box = EntryBox(e);
      bool inside = box.start.size() == global.size();
      for (size_t d = 0; inside && d < global.size(); ++d) {
        inside = box.start[d] >= 0 && box.size[d] >= 0 && box.start[d] + box.size[d] <= global[d];
      }
      if (!inside) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': slice ", BoxString(box),
                                                       " in ", e.file(), " lies outside global shape ",
                                                       ShapeString(global)));
      }
      covered += Volume(box);
      for (size_t j = 0; j < i; ++j) {
        const Box other = EntryBox(*entries[j]);
        if (Volume(box) == 0 || Volume(other) == 0) continue;
        if (std::optional<Box> both = Intersect(box, other)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor '", name, "': slice ", BoxString(box), " in ", e.file(), " overlaps slice ",
              BoxString(other), " in ", entries[j]->file(), " at ", BoxString(*both),
              "; exactly one rank must save each element (save a replicated tensor from one replica)"));
        }
      }
    }
    if (covered != NumElements(global)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "': the saved slices cover ", covered, " of its ", NumElements(global),
          " elements (global shape ", ShapeString(global), "); the ranks' save requests together "
          "must list every element exactly once"));
    }
  }
  return absl::OkStatus();
}

namespace {

// Same-dtype copy of an N-d region by contiguous runs of the last dim.
void CopyRuns(const char* src, const Shape& src_strides, char* dst, const Shape& dst_strides,
              const Shape& size, size_t elem, int dim) {
  const int last = static_cast<int>(size.size()) - 1;
  if (dim == last && src_strides[dim] == 1 && dst_strides[dim] == 1) {
    std::memcpy(dst, src, static_cast<size_t>(size[dim]) * elem);
    return;
  }
  for (int64_t i = 0; i < size[dim]; ++i) {
    const char* s = src + i * src_strides[dim] * static_cast<int64_t>(elem);
    char* d = dst + i * dst_strides[dim] * static_cast<int64_t>(elem);
    if (dim == last) {
      std::memcpy(d, s, elem);
    } else {
      CopyRuns(s, src_strides, d, dst_strides, size, elem, dim + 1);
    }
  }
}

Tensor Region(const Tensor& t, const Shape& t_start, const Box& box) {
  Tensor view = t;
  for (size_t d = 0; d < box.start.size(); ++d) {
    view = view.Narrow(static_cast<int>(d), box.start[d] - t_start[d], box.size[d]);
  }
  return view;
}

}  // namespace

void CopyBox(const Tensor& src, const Shape& src_start, const Tensor& dst, const Shape& dst_start,
             const Box& box) {
  if (Volume(box) == 0) return;
  Tensor s = Region(src, src_start, box);
  Tensor d = Region(dst, dst_start, box);
  if (s.dtype() != d.dtype() || box.size.empty()) {
    d.CopyFrom(s);
    return;
  }
  CopyRuns(static_cast<const char*>(s.raw_data()), s.strides(), static_cast<char*>(d.raw_data()),
           d.strides(), box.size, DTypeSize(s.dtype()), 0);
}

}  // namespace scalemoe::checkpoint
