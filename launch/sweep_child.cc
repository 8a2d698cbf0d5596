// A sweep's child process (launch/sweep_child.h): fork, then in the child
// only async-signal-safe calls (prctl, dup2, exec, write, _exit) on what the
// parent prepared.
#include "launch/sweep_child.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>

extern char** environ;

namespace scalemoe {
namespace {

// This process's environment with `overrides` ("NAME=value") in place.
std::vector<std::string> Environment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  auto name = [](const std::string& var) { return var.substr(0, var.find('=') + 1); };
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    bool replaced = false;
    for (const std::string& o : overrides) replaced = replaced || name(o) == name(var);
    if (!replaced) env.push_back(var);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

}  // namespace

StatusOr<ChildEnd> RunChild(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env_overrides,
                            const std::string& log_path) {
  const std::vector<std::string> env = Environment(env_overrides);
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open ", log_path, " for appending: ", std::strerror(errno)));
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // exec's errno comes back through this pipe; it closes on a good exec.
  int report[2];
  if (null_fd < 0 || pipe2(report, O_CLOEXEC) != 0) {
    const int err = errno;
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("cannot prepare a child: ", std::strerror(err)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the sweep died before prctl
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execvpe(args[0], args.data(), envp.data());
    const int err = errno;
    (void)!write(report[1], &err, sizeof err);
    _exit(127);
  }
  const int fork_errno = errno;
  close(report[1]);
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    close(report[0]);
    return absl::InternalError(absl::StrCat("cannot fork: ", std::strerror(fork_errno)));
  }
  int exec_errno = 0;
  ssize_t got;
  while ((got = read(report[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  close(report[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      return absl::InternalError(absl::StrCat("waiting for ", argv[0], ": ", std::strerror(errno)));
    }
  }
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot start ", argv[0], ": ", std::strerror(exec_errno),
        "; check the path (launcher.mpirun for mpirun, the scalemoe build for the binary)"));
  }
  if (WIFEXITED(status)) {
    return ChildEnd{WEXITSTATUS(status) == 0, absl::StrCat("exit code ", WEXITSTATUS(status))};
  }
  const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  return ChildEnd{false, absl::StrCat("signal ", sig, " (", strsignal(sig), ")")};
}

}  // namespace scalemoe
