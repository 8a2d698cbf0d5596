// Two broadcasts: the length, then the bytes packed into i64 words (the
// Communicator moves tensors, and there is no byte dtype).
#include "parallel/broadcast_string.h"

#include <cstring>

#include "core/tensor.h"

namespace scalemoe {

StatusOr<std::string> BroadcastString(Communicator& comm, const std::string& value, int root) {
  const bool is_root = comm.rank() == root;
  Tensor length = Tensor::Zeros({1}, DType::kI64);
  if (is_root) length.data<int64_t>()[0] = static_cast<int64_t>(value.size());
  SM_RETURN_IF_ERROR(comm.BroadcastHost(length, {.root = root}));
  const int64_t n = length.data<int64_t>()[0];
  // At least one word: a tensor of zero elements is legal but pointless.
  Tensor words = Tensor::Zeros({n / 8 + 1}, DType::kI64);
  if (is_root) std::memcpy(words.raw_data(), value.data(), value.size());
  SM_RETURN_IF_ERROR(comm.BroadcastHost(words, {.root = root}));
  return std::string(static_cast<const char*>(words.raw_data()), static_cast<size_t>(n));
}

}  // namespace scalemoe
