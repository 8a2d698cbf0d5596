// Scale-vector figures: which rank counts what, the one device read and
// the per-key summaries of the world sums.
#include "launch/scale_vector_stats.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

// Whether this rank's copy of `spec` is the one counted over the world (the
// rule of the optimizer's gradient norm; header).
bool CountsHere(const ParamSpec& spec, const GridCoords& coords) {
  const bool expert = spec.layout.is_expert();
  const bool tp_counts = spec.layout.tp_split_dim >= 0 || (expert ? coords.etp : coords.tp) == 0;
  return tp_counts && (expert ? coords.edp : coords.dp) == 0;
}

// "layers.1.moe.experts.3.gamma_gate" -> "layers.1.moe.experts.gamma_gate".
std::string KeyOf(const std::string& vector, int expert) {
  if (expert < 0) return vector;
  const std::string index = ".experts." + std::to_string(expert) + ".";
  const size_t at = vector.find(index);
  SM_CHECK_MSG(at != std::string::npos, vector,
               ": a routed expert's scale vector should be named "
               "<layer>.experts.",
               expert, ".<branch>");
  return vector.substr(0, at) + ".experts." + vector.substr(at + index.size());
}

ScaleVectorFigure FigureOf(const std::vector<double>& values) {
  ScaleVectorFigure f;
  if (values.empty()) return f;
  f.min = *std::min_element(values.begin(), values.end());
  f.max = *std::max_element(values.begin(), values.end());
  for (double v : values) f.mean += v;
  f.mean /= static_cast<double>(values.size());
  double var = 0;
  for (double v : values) var += (v - f.mean) * (v - f.mean);
  f.std = std::sqrt(var / static_cast<double>(values.size()));
  return f;
}

}  // namespace

ScaleVectorStats::ScaleVectorStats(const ExecContext& ctx, const ParamRegistry& whole,
                                   const ParamRegistry& local, const GridCoords& coords,
                                   config::ScaleVectorConfig::Reparam reparam)
    : reparam_(reparam), values_(local.flat_values()) {
  std::vector<int64_t> sum_rows, beta_rows;
  std::vector<int> beta_slots;
  for (const auto& p : whole.params()) {
    if (!IsScaleVector(p->spec.role)) continue;
    const int slot = static_cast<int>(slots_.size());
    slots_.push_back({p->spec.scale_vector.vector, p->spec.scale_vector.part,
                      NumElements(p->spec.shape), p->spec.layout.expert});
    const Param* mine = local.Find(p->spec.name);
    if (mine == nullptr || !CountsHere(mine->spec, coords)) continue;
    if (p->spec.scale_vector.part == VectorPart::kBeta) {
      beta_rows.insert(beta_rows.end(), {mine->flat_offset, 0, 1});  // dst set below
      beta_slots.push_back(slot);
    } else {
      sum_rows.insert(sum_rows.end(), {mine->flat_offset, mine->flat_offset + mine->local_numel()});
      packed_slot_.push_back(slot);
    }
  }
  num_sums_ = static_cast<int64_t>(packed_slot_.size());
  num_betas_ = static_cast<int64_t>(beta_slots.size());
  for (int64_t b = 0; b < num_betas_; ++b) beta_rows[3 * b + 1] = num_sums_ + b;
  packed_slot_.insert(packed_slot_.end(), beta_slots.begin(), beta_slots.end());
  if (num_sums_ > 0) sum_rows_ = TableToDevice(ctx, {num_sums_, 2}, sum_rows);
  if (num_betas_ > 0) beta_rows_ = TableToDevice(ctx, {num_betas_, 3}, beta_rows);
}

std::vector<double> ScaleVectorStats::ReadShares(const ExecContext& ctx) const {
  std::vector<double> shares(slots_.size(), 0.0);
  if (num_sums_ + num_betas_ == 0) return shares;
  Tensor packed = ctx.Empty({num_sums_ + num_betas_}, DType::kF64);
  if (num_sums_ > 0) {
    const Tensor sums = packed.Narrow(0, 0, num_sums_);
    ops::Zero(ctx, sums);  // SegmentSumOfSquares adds
    ops::SegmentSumOfSquares(ctx, values_, sum_rows_, sums);
  }
  if (num_betas_ > 0) ops::CopySegments(ctx, values_, packed, beta_rows_);
  const std::vector<double> host = ReadHostDoubles(ctx, packed);
  for (size_t i = 0; i < host.size(); ++i) shares[packed_slot_[i]] = host[i];
  return shares;
}

std::vector<ScaleVectorSummary> ScaleVectorStats::Summarise(
    const std::vector<double>& slot_values) const {
  SM_CHECK_MSG(slot_values.size() == slots_.size(), "scale-vector statistics: ", slot_values.size(),
               " sums for ", slots_.size(), " slots");
  // Per effective vector, in order of first appearance: rms and β.
  struct Vector {
    std::string key;
    bool expert = false;  // a routed expert's
    int64_t dim = 0;
    double sum_sq = 0, beta = 1;
    bool has_beta = false;
  };
  std::vector<Vector> vectors;
  std::map<std::string, size_t> vector_index;
  for (size_t s = 0; s < slots_.size(); ++s) {
    const Slot& slot = slots_[s];
    auto [it, added] = vector_index.emplace(slot.vector, vectors.size());
    if (added) vectors.push_back({KeyOf(slot.vector, slot.expert), slot.expert >= 0});
    Vector& v = vectors[it->second];
    if (slot.part == VectorPart::kBeta) {
      v.beta = slot_values[s];
      v.has_beta = true;
    } else {
      v.sum_sq = slot_values[s];
      v.dim = slot.dim;
    }
  }
  std::vector<ScaleVectorSummary> out;
  std::map<std::string, size_t> key_index;
  std::vector<std::vector<double>> rms, beta;
  for (const Vector& v : vectors) {
    double r = std::sqrt(v.sum_sq / static_cast<double>(std::max<int64_t>(v.dim, 1)));
    if (v.has_beta) {
      r = reparam_ == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED
              ? std::fabs(v.beta)  // ‖β·α·√d/‖α‖‖ / √d
              : std::fabs(v.beta) * r;
    }
    auto [it, added] = key_index.emplace(v.key, out.size());
    if (added) {
      ScaleVectorSummary s;
      s.key = v.key;
      s.experts = v.expert;
      s.has_beta = v.has_beta;
      out.push_back(s);
      rms.emplace_back();
      beta.emplace_back();
    }
    rms[it->second].push_back(r);
    if (v.has_beta) beta[it->second].push_back(v.beta);
  }
  for (size_t k = 0; k < out.size(); ++k) {
    out[k].count = static_cast<int>(rms[k].size());
    out[k].rms = FigureOf(rms[k]);
    if (out[k].has_beta) out[k].beta = FigureOf(beta[k]);
  }
  return out;
}

nlohmann::json ScaleVectorJson(const std::vector<ScaleVectorSummary>& summaries) {
  auto figure = [](const ScaleVectorFigure& f) {
    return nlohmann::json{{"mean", f.mean}, {"min", f.min}, {"max", f.max}, {"std", f.std}};
  };
  nlohmann::json sv = nlohmann::json::object();
  for (const ScaleVectorSummary& s : summaries) {
    nlohmann::json entry;
    if (s.experts) {
      entry["n"] = s.count;
      entry["rms"] = figure(s.rms);
      if (s.has_beta) entry["beta"] = figure(s.beta);
    } else {
      entry["rms"] = s.rms.mean;
      if (s.has_beta) entry["beta"] = s.beta.mean;
    }
    sv[s.key] = std::move(entry);
  }
  return sv;
}

std::vector<std::pair<std::string, double>> ScaleVectorScalars(
    const std::vector<ScaleVectorSummary>& summaries) {
  std::vector<std::pair<std::string, double>> out;
  for (const ScaleVectorSummary& s : summaries) {
    const std::string tag = "sv/" + s.key + "/";
    auto add = [&](const std::string& name, const ScaleVectorFigure& f) {
      if (!s.experts) {
        out.emplace_back(tag + name, f.mean);
        return;
      }
      out.emplace_back(tag + name + "_mean", f.mean);
      out.emplace_back(tag + name + "_min", f.min);
      out.emplace_back(tag + name + "_max", f.max);
      out.emplace_back(tag + name + "_std", f.std);
    };
    add("rms", s.rms);
    if (s.has_beta) add("beta", s.beta);
  }
  return out;
}

}  // namespace scalemoe
