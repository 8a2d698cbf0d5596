// Error channel for all of scalemoe: absl::Status / absl::StatusOr<T>.
// Anything that can fail returns one of these; only main() and tests exit.
// Messages name the thing (file, field, rank, parameter) and the fix.
// SM_CHECK is for broken invariants (programming errors), never for input.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace scalemoe {
using absl::Status;
using absl::StatusOr;

// The same error with `context` in front of its message ("layer 3 moe
// forward: all-reduce on tp[0,1] failed: ..."); OK stays OK.
inline Status WithContext(const Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return Status(status.code(), absl::StrCat(context, ": ", status.message()));
}
}  // namespace scalemoe

#define SM_CONCAT_INNER_(a, b) a##b
#define SM_CONCAT_(a, b) SM_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function if it is an error.
#define SM_RETURN_IF_ERROR(expr)                    \
  do {                                              \
    ::absl::Status sm_status_ = (expr);             \
    if (!sm_status_.ok()) return sm_status_;        \
  } while (0)

// As SM_RETURN_IF_ERROR, with the concatenated context put in front of the
// message: SM_RETURN_IF_ERROR_CTX(Foo(), "layer ", l, " forward").
#define SM_RETURN_IF_ERROR_CTX(expr, ...)                                  \
  do {                                                                     \
    ::absl::Status sm_status_ = (expr);                                    \
    if (!sm_status_.ok()) {                                                \
      return ::scalemoe::WithContext(sm_status_, ::absl::StrCat(__VA_ARGS__)); \
    }                                                                      \
  } while (0)

// `SM_ASSIGN_OR_RETURN(auto x, Foo());` assigns the value or returns the error.
#define SM_ASSIGN_OR_RETURN(lhs, rexpr) \
  SM_ASSIGN_OR_RETURN_IMPL_(SM_CONCAT_(sm_statusor_, __LINE__), lhs, rexpr)
#define SM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

// Invariant check: prints where and why, then aborts. Not for user input.
#define SM_CHECK(cond)                                                        \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "%s:%d: SM_CHECK failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                    \
      std::abort();                                                           \
    }                                                                         \
  } while (0)

#define SM_CHECK_MSG(cond, ...)                                                \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: SM_CHECK failed: %s: %s\n", __FILE__,       \
                   __LINE__, #cond, ::absl::StrCat(__VA_ARGS__).c_str());       \
      std::abort();                                                            \
    }                                                                          \
  } while (0)

#define SM_CHECK_OK(expr)                                                     \
  do {                                                                        \
    ::absl::Status sm_status_ = (expr);                                       \
    if (!sm_status_.ok()) {                                                   \
      std::fprintf(stderr, "%s:%d: SM_CHECK_OK failed: %s\n", __FILE__,       \
                   __LINE__, sm_status_.ToString().c_str());                  \
      std::abort();                                                           \
    }                                                                         \
  } while (0)
