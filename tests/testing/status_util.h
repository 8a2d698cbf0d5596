// Status helpers for tests (header-only). Must() unwraps a Status or
// StatusOr and aborts the test binary with the error's message when it is
// not OK: for calls whose failure is a test failure, inside lambdas and
// fixtures where ASSERT_* cannot return.
#pragma once

#include <utility>

#include "core/status.h"

namespace scalemoe::testing {

inline void Must(const Status& status) { SM_CHECK_MSG(status.ok(), status.ToString()); }

template <typename T>
T Must(StatusOr<T> value) {
  SM_CHECK_MSG(value.ok(), value.status().ToString());
  return *std::move(value);
}

}  // namespace scalemoe::testing
