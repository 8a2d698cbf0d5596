#include "norm/scaled_linear_group.h"

#include <algorithm>

#include "core/host_values.h"

namespace scalemoe {
namespace {

// `t` [n] as the [1, n] matrix the vector groups hold.
Tensor AsRow(const Tensor& t) { return t.View({1, t.numel()}); }

// Whether no two of `vectors` share their data (pairwise: the runs are
// short) or, with `or_shared`, all are the same vector.
bool AllOwn(const std::vector<const Tensor*>& vectors, bool or_shared) {
  const size_t n = vectors.size();
  if (or_shared && std::all_of(vectors.begin(), vectors.end(), [&](const Tensor* v) {
        return v->SharesDataWith(*vectors.front());
      })) {
    return true;
  }
  for (size_t a = 0; a < n; ++a) {
    for (size_t b = a + 1; b < n; ++b) {
      if (vectors[a]->SharesDataWith(*vectors[b])) return false;
    }
  }
  return true;
}

// `t` when defined, else `filler` (a kept tensor of `shape` and `dtype`,
// allocated once, then filled with ones when `ones`).
Tensor OrFiller(const ExecContext& ctx, const Tensor& t, Tensor& filler, int64_t n, DType dtype,
                bool ones) {
  if (t.defined()) return AsRow(t);
  if (!filler.defined() || filler.dtype() != dtype || filler.numel() != n) {
    if (ones) {  // uploaded once (core/host_values.h), in the vectors' dtype
      filler = ctx.Empty({1, n}, dtype);
      ops::Copy(ctx, TableToDevice(ctx, {1, n}, std::vector<double>(n, 1.0)), filler);
    } else {
      filler = ctx.Empty({1, n}, dtype);
      ops::Zero(ctx, filler);  // never read back; zero rather than arena garbage
    }
  }
  return filler;
}

}  // namespace

ScaledLinearGroup::ScaledLinearGroup(std::vector<ScaledLinear*> maps) : maps_(std::move(maps)) {
  for (const ScaledLinear* m : maps_) SM_CHECK(m != nullptr);
}

bool ScaledLinearGroup::Formable(const ScaledLinear& m) {
  const DType w = m.weight_->value.dtype(), eff = m.gemm_dtype_;
  if (eff != w && !(w == DType::kF32 && eff == DType::kBF16)) return false;
  return m.FoldsOncePerStep() || m.CopiesWeight();  // else no weight to form
}

bool ScaledLinearGroup::FormsWith(const ScaledLinear& first, const ScaledLinear& m) {
  const bool fold = first.FoldsOncePerStep();
  return Formable(m) && m.FoldsOncePerStep() == fold && m.CopiesWeight() == first.CopiesWeight() &&
         m.weight_->local_shape == first.weight_->local_shape &&
         m.weight_->value.dtype() == first.weight_->value.dtype() &&
         m.gemm_dtype_ == first.gemm_dtype_;
}

void ScaledLinearGroup::UpdateRuns() {
  std::vector<Run> runs;
  for (size_t begin = 0; begin < maps_.size();) {
    size_t end = begin + 1;
    if (Formable(*maps_[begin])) {
      while (end < maps_.size() && FormsWith(*maps_[begin], *maps_[end])) ++end;
    }
    if (Formable(*maps_[begin])) {
      runs.emplace_back();
      runs.back().begin = begin;
      runs.back().end = end;
    }
    begin = end;
  }
  const bool same =
      runs.size() == runs_.size() &&
      std::equal(runs.begin(), runs.end(), runs_.begin(),
                 [](const Run& a, const Run& b) { return a.begin == b.begin && a.end == b.end; });
  if (!same) runs_ = std::move(runs);
}

bool ScaledLinearGroup::UnfoldsTogether(const Run& run) const {
  if (!maps_[run.begin]->folded()) return false;
  std::vector<const Tensor*> d_u, d_gamma;
  for (size_t i = run.begin; i < run.end; ++i) {
    const ScaledLinear* m = maps_[i];
    if (m->shared_weight_grad_) return false;
    if (m->d_u_.defined()) d_u.push_back(&m->d_u_);
    if (m->DGamma().defined()) d_gamma.push_back(&m->DGamma());
  }
  // du is each map's own; γ may be shared by all maps (mode SHARED), and
  // then so is dγ (a map without γ would add its sum to a scratch vector of
  // its own: no mix of the two).
  const bool every_gamma = d_gamma.size() == run.end - run.begin;
  return AllOwn(d_u, /*or_shared=*/false) && AllOwn(d_gamma, /*or_shared=*/every_gamma);
}

void ScaledLinearGroup::UpdateTables(const ExecContext& ctx, Run& run) const {
  // A vector that some maps of a folded run lack enters as ones, its sum
  // into a scratch vector of the map's own: multiplying by 1 is exact, so
  // every map still gets its own bits.
  bool any_u = false, any_gamma = false;
  for (size_t i = run.begin; i < run.end; ++i) {
    any_u = any_u || maps_[i]->u_value_.defined();
    any_gamma = any_gamma || maps_[i]->Gamma().defined();
  }
  const size_t n = run.end - run.begin;
  run.d_u_scratch.resize(n);
  run.d_gamma_scratch.resize(n);
  std::vector<Tensor> w, u, gamma, formed, grad, d_u, d_gamma;
  for (size_t i = run.begin; i < run.end; ++i) {
    const ScaledLinear* m = maps_[i];
    w.push_back(m->weight_->value);
    formed.push_back(m->effective_weight());
    grad.push_back(m->weight_->grad);
    if (!m->folded()) continue;  // a copy: no vectors
    const DType dt = m->weight_->value.dtype();
    const int64_t r = m->out_features(), c = m->in_features();
    if (any_u) {
      u.push_back(OrFiller(ctx, m->u_value_, run.ones_rows, r, dt, /*ones=*/true));
      d_u.push_back(OrFiller(ctx, m->d_u_, run.d_u_scratch[i - run.begin], r, dt, false));
    }
    if (any_gamma) {
      gamma.push_back(OrFiller(ctx, m->Gamma(), run.ones_cols, c, dt, /*ones=*/true));
      d_gamma.push_back(
          OrFiller(ctx, m->DGamma(), run.d_gamma_scratch[i - run.begin], c, dt, false));
    }
  }
  ops::UpdateMatrixGroup(ctx, std::move(w), run.weights);
  ops::UpdateMatrixGroup(ctx, std::move(u), run.rows);
  ops::UpdateMatrixGroup(ctx, std::move(gamma), run.cols);
  ops::UpdateMatrixGroup(ctx, std::move(formed), run.formed);
  ops::UpdateMatrixGroup(ctx, std::move(grad), run.grads);
  ops::UpdateMatrixGroup(ctx, std::move(d_u), run.d_rows);
  ops::UpdateMatrixGroup(ctx, std::move(d_gamma), run.d_cols);
}

Status ScaledLinearGroup::PrepareStep(const ExecContext& ctx, DType dtype) {
  for (ScaledLinear* m : maps_) SM_RETURN_IF_ERROR(m->PrepareBuffers(ctx, dtype));
  UpdateRuns();
  size_t next = 0;  // the first map not formed yet
  for (Run& run : runs_) {
    for (; next < run.begin; ++next) maps_[next]->FormGemmWeight(ctx);
    run.unfolds = UnfoldsTogether(run);
    UpdateTables(ctx, run);
    // W_eff = diag(u)·W·diag(γ) for every map, a bf16 W_eff folded in f32 and
    // rounded once as FormWeight does; or, unfolded, the bf16 copy of W (no
    // vectors: W rounded once, as the Copy).
    ops::ScaleRowsColsGroup(ctx, run.weights, run.rows, run.cols, run.formed);
    next = run.end;
  }
  for (; next < maps_.size(); ++next) maps_[next]->FormGemmWeight(ctx);
  return absl::OkStatus();
}

Status ScaledLinearGroup::FinishBackward(const ExecContext& ctx) {
  // In map order: a dγ shared by several maps takes their sums in that order.
  size_t next = 0;
  auto one_by_one = [&](size_t end) {
    for (; next < end; ++next) {
      if (maps_[next]->folded()) maps_[next]->Unfold(ctx);
    }
  };
  for (const Run& run : runs_) {
    one_by_one(run.begin);
    if (run.unfolds) {
      // Every map's Unfold: in place in W's gradient.
      ops::ScaleRowsColsBackwardGroup(ctx, run.weights, run.rows, run.cols, run.grads, run.grads,
                                      run.d_rows, run.d_cols);
      next = run.end;
    } else {
      one_by_one(run.end);
    }
  }
  one_by_one(maps_.size());
  for (ScaledLinear* m : maps_) SM_RETURN_IF_ERROR(m->FinishVectors(ctx));
  return absl::OkStatus();
}

bool ScaledLinearGroup::forms_together() const {
  return runs_.size() == 1 && runs_[0].begin == 0 && runs_[0].end == maps_.size();
}

bool ScaledLinearGroup::unfolds_together() const { return forms_together() && runs_[0].unfolds; }

int ScaledLinearGroup::form_launches() const {
  int launches = 0;
  for (const ScaledLinear* m : maps_) launches += m->FoldsOncePerStep() || m->CopiesWeight();
  for (const Run& run : runs_) launches -= static_cast<int>(run.end - run.begin) - 1;
  return launches;
}

int ScaledLinearGroup::unfold_launches() const {
  int launches = 0;
  for (const ScaledLinear* m : maps_) launches += m->folded();
  for (const Run& run : runs_) {
    if (run.unfolds) launches -= static_cast<int>(run.end - run.begin) - 1;
  }
  return launches;
}

}  // namespace scalemoe
