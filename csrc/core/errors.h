// Internal error and logging helpers shared by every translation unit.
//
// A failing call records (status, reason) in thread-local storage and returns the status, so the C API
// never throws across the boundary: `return dg::fail(DIFFGEMMA_ERR_IO, "cannot open %s: %s", ...)`.
#pragma once

#include "diffgemma.h"

#include <string>
#include <vector>

namespace dg {

// Records the reason of a failure on this thread and returns `status` for a tail call.
int32_t fail(int32_t status, const char * fmt, ...) __attribute__((format(printf, 2, 3)));

// printf-style logging through the user's callback (default: stderr at WARN and above).
void log(int32_t level, const char * fmt, ...) __attribute__((format(printf, 2, 3)));

// A message the user should see whatever the log level (the offload memory plan): INFO through the log
// callback, or stderr when none is set.
void announce(const char * text);

// "a, b,,c" -> {"a", "b", "c"}: the comma-separated lists of the C API (devices, RPC endpoints), items trimmed
// of blanks, empty ones dropped; {} for NULL.
std::vector<std::string> split_list(const char * text);

// printf into a std::string.
std::string format(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

// Exception used inside the C++ core; converted to a status at the API boundary by `guard`.
struct Error {
    int32_t status;
    std::string message;
};

[[noreturn]] void raise(int32_t status, const char * fmt, ...) __attribute__((format(printf, 2, 3)));

// Collects the ERROR lines ggml logs on this thread while it is alive. gguf_init_from_file returns NULL
// without a reason and only its log says what was wrong (bad type id, duplicate name, offset mismatch, ...);
// the loader quotes the captured text in its error message instead of a generic "corrupt file".
// Captured lines are not printed to stderr (they travel in the message); a user log callback still gets them.
class GgmlErrorCapture {
  public:
    GgmlErrorCapture();
    ~GgmlErrorCapture();
    GgmlErrorCapture(const GgmlErrorCapture &) = delete;
    GgmlErrorCapture & operator=(const GgmlErrorCapture &) = delete;
    // The captured lines, without ggml's "function_name: " prefixes, joined by "; " ("" if none).
    std::string text() const;
};

// While alive on a thread, a ggml abort raised by ggml-rpc (a lost or misbehaving RPC server) throws dg::Error
// instead of killing the process (rpc.h says why and what follows). Defined in rpc.cpp.
class RemoteFaultScope {
  public:
    RemoteFaultScope();
    ~RemoteFaultScope();
    RemoteFaultScope(const RemoteFaultScope &) = delete;
    RemoteFaultScope & operator=(const RemoteFaultScope &) = delete;
};

// Runs `fn` and turns any escaping exception into a recorded status, so no C++ exception crosses the C API.
template <typename Fn>
int32_t guard(Fn && fn) {
    try {
        RemoteFaultScope remote_faults;
        return fn();
    } catch (const Error & e) {
        return fail(e.status, "%s", e.message.c_str());
    } catch (const std::bad_alloc &) {
        return fail(DIFFGEMMA_ERR_OUT_OF_MEMORY, "out of memory (a host allocation failed)");
    } catch (const std::exception & e) {
        return fail(DIFFGEMMA_ERR_INTERNAL, "internal error: %s", e.what());
    }
}

}  // namespace dg
