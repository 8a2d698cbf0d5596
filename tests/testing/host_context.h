// One CPU ExecContext for tests that call communicators or ops outside a
// layer (header-only; shared by FakeWorld's rank threads: the context is
// thread-safe).
#pragma once

#include "core/context.h"

namespace scalemoe::testing {

inline const ExecContext& HostCtx() {
  static const ExecContext* ctx = new ExecContext(ExecContext::Cpu());
  return *ctx;
}

}  // namespace scalemoe::testing
