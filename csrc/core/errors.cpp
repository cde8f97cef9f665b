// Thread-local last error, status names and the log sink (ours and ggml's).
#include "core/errors.h"

#include "ggml.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <new>

namespace {

thread_local std::string t_last_error;
thread_local int32_t t_last_status = DIFFGEMMA_OK;

thread_local bool t_capture_active = false;   // a GgmlErrorCapture is alive on this thread
thread_local bool t_capture_in_error = false;  // the last captured fragment was an ERROR (CONT lines follow it)
thread_local std::string t_capture;

std::atomic<diffgemma_log_callback> g_log_callback{nullptr};
std::atomic<void *> g_log_user_data{nullptr};

std::string vformat(const char * fmt, va_list args) {
    va_list copy;
    va_copy(copy, args);
    const int n = std::vsnprintf(nullptr, 0, fmt, copy);
    va_end(copy);
    if (n <= 0) {
        return std::string();
    }
    std::string out(static_cast<size_t>(n), '\0');
    std::vsnprintf(out.data(), out.size() + 1, fmt, args);
    return out;
}

void emit(int32_t level, const char * text) {
    diffgemma_log_callback cb = g_log_callback.load();
    if (cb != nullptr) {
        cb(level, text, g_log_user_data.load());
    } else if (level >= DIFFGEMMA_LOG_WARN) {
        std::fputs(text, stderr);
    }
}

// ggml logs in fragments (GGML_LOG_LEVEL_CONT continues the previous line); we forward them as they come.
void ggml_log_bridge(enum ggml_log_level level, const char * text, void * /*user_data*/) {
    if (t_capture_active) {
        const bool error = level == GGML_LOG_LEVEL_ERROR || (level == GGML_LOG_LEVEL_CONT && t_capture_in_error);
        t_capture_in_error = error;
        if (error) {
            t_capture += text;
            if (g_log_callback.load() == nullptr) {
                return;  // the reason reaches the caller in the error message; stderr stays quiet
            }
        }
    }
    int32_t ours = DIFFGEMMA_LOG_DEBUG;
    switch (level) {
        case GGML_LOG_LEVEL_INFO:  ours = DIFFGEMMA_LOG_INFO; break;
        case GGML_LOG_LEVEL_WARN:  ours = DIFFGEMMA_LOG_WARN; break;
        case GGML_LOG_LEVEL_ERROR: ours = DIFFGEMMA_LOG_ERROR; break;
        default: break;
    }
    emit(ours, text);
}

}  // namespace

namespace dg {

std::string format(const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    return s;
}

int32_t fail(int32_t status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    t_last_error = vformat(fmt, args);
    va_end(args);
    t_last_status = status;
    return status;
}

void raise(int32_t status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string msg = vformat(fmt, args);
    va_end(args);
    throw Error{status, msg};
}

void log(int32_t level, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string line = vformat(fmt, args);
    va_end(args);
    if (line.empty() || line.back() != '\n') {
        line.push_back('\n');
    }
    emit(level, line.c_str());
}

void announce(const char * text) {
    std::string line = text;
    if (line.empty() || line.back() != '\n') {
        line.push_back('\n');
    }
    if (g_log_callback.load() != nullptr) {
        emit(DIFFGEMMA_LOG_INFO, line.c_str());
    } else {
        std::fputs(line.c_str(), stderr);
    }
}

GgmlErrorCapture::GgmlErrorCapture() {
    // The bridge must be ggml's sink for the capture to see anything; installing it again is harmless.
    ggml_log_set(ggml_log_bridge, nullptr);
    t_capture.clear();
    t_capture_in_error = false;
    t_capture_active = true;
}

GgmlErrorCapture::~GgmlErrorCapture() {
    t_capture_active = false;
    t_capture.clear();
}

std::string GgmlErrorCapture::text() const {
    std::string out;
    size_t pos = 0;
    while (pos < t_capture.size()) {
        size_t end = t_capture.find('\n', pos);
        if (end == std::string::npos) {
            end = t_capture.size();
        }
        std::string line = t_capture.substr(pos, end - pos);
        pos = end + 1;
        // ggml prefixes its messages with the C function name ("gguf_init_from_file_impl: ..."): drop it.
        const size_t colon = line.find(": ");
        if (colon != std::string::npos && colon > 0 &&
            line.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == colon) {
            line.erase(0, colon + 2);
        }
        while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) {
            line.pop_back();
        }
        if (!line.empty() && out.find(line) == std::string::npos) {
            out += (out.empty() ? "" : "; ") + line;
        }
    }
    return out;
}

std::vector<std::string> split_list(const char * text) {
    std::vector<std::string> items;
    const std::string s = text != nullptr ? text : "";
    size_t start = 0;
    while (start <= s.size()) {
        size_t comma = s.find(',', start);
        comma = comma == std::string::npos ? s.size() : comma;
        std::string item = s.substr(start, comma - start);
        item.erase(0, item.find_first_not_of(" \t"));
        item.erase(item.find_last_not_of(" \t") + 1);
        if (!item.empty()) {
            items.push_back(item);
        }
        start = comma + 1;
    }
    return items;
}

}  // namespace dg

extern "C" {

const char * diffgemma_last_error(void) { return t_last_error.c_str(); }

int32_t diffgemma_last_status(void) { return t_last_status; }

const char * diffgemma_status_name(int32_t status) {
    switch (status) {
        case DIFFGEMMA_OK:                    return "DIFFGEMMA_OK";
        case DIFFGEMMA_ERR_INVALID_ARGUMENT:  return "DIFFGEMMA_ERR_INVALID_ARGUMENT";
        case DIFFGEMMA_ERR_IO:                return "DIFFGEMMA_ERR_IO";
        case DIFFGEMMA_ERR_BAD_FORMAT:        return "DIFFGEMMA_ERR_BAD_FORMAT";
        case DIFFGEMMA_ERR_UNSUPPORTED_MODEL: return "DIFFGEMMA_ERR_UNSUPPORTED_MODEL";
        case DIFFGEMMA_ERR_UNSUPPORTED_TYPE:  return "DIFFGEMMA_ERR_UNSUPPORTED_TYPE";
        case DIFFGEMMA_ERR_OUT_OF_MEMORY:     return "DIFFGEMMA_ERR_OUT_OF_MEMORY";
        case DIFFGEMMA_ERR_CONTEXT_OVERFLOW:  return "DIFFGEMMA_ERR_CONTEXT_OVERFLOW";
        case DIFFGEMMA_ERR_CANCELLED:         return "DIFFGEMMA_ERR_CANCELLED";
        case DIFFGEMMA_ERR_BACKEND:           return "DIFFGEMMA_ERR_BACKEND";
        case DIFFGEMMA_ERR_BUSY:              return "DIFFGEMMA_ERR_BUSY";
        case DIFFGEMMA_ERR_BUFFER_TOO_SMALL:  return "DIFFGEMMA_ERR_BUFFER_TOO_SMALL";
        case DIFFGEMMA_ERR_INTERNAL:          return "DIFFGEMMA_ERR_INTERNAL";
        default:                              return "DIFFGEMMA_ERR_UNKNOWN";
    }
}

void diffgemma_log_set(diffgemma_log_callback callback, void * user_data) {
    g_log_user_data.store(user_data);
    g_log_callback.store(callback);
    // ggml's own messages (backend init, allocation failures) must reach the same sink.
    ggml_log_set(ggml_log_bridge, nullptr);
}

}  // extern "C"
