// ScaleVectorGroup (norm/scale_vector_group.h): Compute and Backward of a
// mix of vectors — plain β·α ones of one length (run together), a PLAIN
// one, a normalized β·α one and a plain β·α one of another length (each on
// its own) — give the same bits as every vector's own Compute and Backward.
#include "norm/scale_vector_group.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/philox.h"
#include "gtest/gtest.h"
#include "norm/scale_vector.h"
#include "tests/testing/same_bits.h"
#include "tests/testing/status_util.h"

namespace scalemoe {
namespace {

using testing::SameBits;

using Sv = config::ScaleVectorConfig;
using testing::Must;

struct Spec {
  Reparam reparam;
  int64_t dim;
};
const Spec kSpecs[] = {{Sv::MAGNITUDE_DIRECTION, 6}, {Sv::PLAIN, 6},
                       {Sv::MAGNITUDE_DIRECTION, 6}, {Sv::MAGNITUDE_DIRECTION_NORMALIZED, 6},
                       {Sv::MAGNITUDE_DIRECTION, 3}, {Sv::MAGNITUDE_DIRECTION, 6}};

struct Rig {
  ParamRegistry registry;
  std::vector<std::unique_ptr<ScaleVector>> vectors;
  std::vector<Tensor> gammas, d_gammas;

  Rig() {
    int i = 0;
    for (const Spec& s : kSpecs) {
      vectors.push_back(std::make_unique<ScaleVector>(registry, absl::StrCat("v", i++), s.dim,
                                                      ParamRole::kInputNormScale, s.reparam));
    }
    Must(registry.Materialize(3, DType::kF32, Device::kCPU));
    int64_t stream = 0;
    for (const auto& p : registry.params()) {
      ++stream;
      for (int64_t j = 0; j < p->local_numel(); ++j) {
        p->value.data<float>()[j] = static_cast<float>(1.0 + 0.3 * PhiloxNormal(4, stream, j));
        p->grad.data<float>()[j] = static_cast<float>(PhiloxNormal(5, stream, j));
      }
    }
    for (size_t v = 0; v < vectors.size(); ++v) {
      gammas.push_back(Tensor::Empty({kSpecs[v].dim}, DType::kF32));
      Tensor d = Tensor::Empty({kSpecs[v].dim}, DType::kF32);
      for (int64_t j = 0; j < d.numel(); ++j) {
        d.data<float>()[j] = static_cast<float>(PhiloxNormal(6, v, j));
      }
      d_gammas.push_back(d);
    }
  }
};

TEST(ScaleVectorGroupTest, EqualsEachVectorOnItsOwn) {
  const ExecContext ctx;
  Rig grouped, single;
  std::vector<const ScaleVector*> vectors;
  for (const auto& v : grouped.vectors) vectors.push_back(v.get());
  ScaleVectorGroup group(vectors);
  EXPECT_EQ(group.grouped(), 3);  // the plain β·α ones of length 6
  Must(group.Compute(ctx, grouped.gammas));
  Must(group.Backward(ctx, grouped.d_gammas));
  for (size_t v = 0; v < single.vectors.size(); ++v) {
    Must(single.vectors[v]->Compute(ctx, single.gammas[v]));
    Must(single.vectors[v]->Backward(ctx, single.d_gammas[v]));
    EXPECT_TRUE(SameBits(grouped.gammas[v], single.gammas[v])) << "vector " << v;
  }
  EXPECT_TRUE(ctx.status().ok());
  EXPECT_TRUE(SameBits(grouped.registry.flat_grads(), single.registry.flat_grads()));
}

}  // namespace
}  // namespace scalemoe
