#include "devices/rpc.h"

#include "core/cpu_threads.h"
#include "core/errors.h"

#include "ggml.h"

#if __has_include("ggml-rpc.h")
#include "ggml-rpc.h"
#endif

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace dg {

namespace {

// The protocol facts the probe needs (ggml-rpc.cpp, protocol 5): a request is one command byte, a u64 size
// and the payload; HELLO is command 14 with 24 bytes of transport capabilities, answered by a u64 size and
// {major, minor, patch, pad, 24 bytes of capabilities}.
#ifdef RPC_PROTO_MAJOR_VERSION
constexpr int kProtoMajor = RPC_PROTO_MAJOR_VERSION;
constexpr int kProtoMinor = RPC_PROTO_MINOR_VERSION;
#else
constexpr int kProtoMajor = 5;
constexpr int kProtoMinor = 0;
#endif
constexpr uint8_t kCmdHello = 14;
constexpr size_t kCapsSize = 24;
constexpr size_t kHelloReplySize = 4 + kCapsSize;

thread_local int t_fault_scopes = 0;

std::mutex g_mutex;                            // registration
std::set<std::string> g_registered;            // endpoints whose devices ggml knows
std::mutex g_addr_mutex;                       // the addresses; never held across an RPC call
std::vector<sockaddr_in> g_registered_addrs;   // registered endpoints' addresses, to find ggml's sockets
std::atomic<bool> g_any_registered{false};     // a server was registered: passes feed the timeout
std::atomic<int> g_io_timeout_s{kRpcIoTimeoutS};  // the silence allowed now (note_compute_pass)
std::mutex g_pass_mutex;
double g_slowest_pass_s = 0.0;                 // the slowest compute pass so far, seconds

// Calls fn(fd) for every socket of this process connected to a registered server (ggml opens them lazily,
// one per endpoint, and keeps them while buffers exist).
template <typename Fn>
void for_each_rpc_socket(Fn fn) {
    std::lock_guard<std::mutex> lock(g_addr_mutex);
    if (g_registered_addrs.empty()) {
        return;
    }
    DIR * dir = opendir("/proc/self/fd");
    if (dir == nullptr) {
        return;
    }
    while (dirent * e = readdir(dir)) {
        const int fd = std::atoi(e->d_name);
        if (fd <= 2 || fd == dirfd(dir)) {
            continue;
        }
        sockaddr_in peer{};
        socklen_t len = sizeof(peer);
        if (getpeername(fd, reinterpret_cast<sockaddr *>(&peer), &len) != 0 || peer.sin_family != AF_INET) {
            continue;
        }
        for (const sockaddr_in & a : g_registered_addrs) {
            if (a.sin_addr.s_addr == peer.sin_addr.s_addr && a.sin_port == peer.sin_port) {
                fn(fd);
            }
        }
    }
    closedir(dir);
}

// ggml's abort callback: inside a RemoteFaultScope, an abort raised by ggml-rpc (a lost or misbehaving server)
// becomes a dg::Error; anything else keeps ggml's behaviour (the message, then abort()). The connections to the
// servers are shut down first: a stalled server would otherwise cost every later call and every free of its
// buffers another socket timeout (measured: 30 s each, 92 s to close a model), a dead one nothing more. This
// ends the process's other RPC connections too; their models fail their next call and must be reloaded.
void on_ggml_abort(const char * message) {
    if (t_fault_scopes > 0 && std::strstr(message, "ggml-rpc") != nullptr) {
        for_each_rpc_socket([](int fd) { shutdown(fd, SHUT_RDWR); });
        throw Error{DIFFGEMMA_ERR_BACKEND,
                    format("the connection to an RPC server was lost or it answered garbage (%s); the model's remote "
                           "weights are gone with it: close it and load it again once the server is back (hint: "
                           "`diffgemma-cpp rpc-server` must keep running while a client uses it)", message)};
    }
    std::fprintf(stderr, "%s\n", message);
}

struct Endpoint {
    std::string host;
    int port = 0;
};

Endpoint split_endpoint(const std::string & endpoint) {
    const size_t colon = endpoint.rfind(':');
    Endpoint e;
    if (colon == std::string::npos || colon == 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "RPC server '%s' is not host:port (e.g. 127.0.0.1:50052)", endpoint.c_str());
    }
    e.host = endpoint.substr(0, colon);
    const std::string port = endpoint.substr(colon + 1);
    char * end = nullptr;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 1 || p > 65535) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "RPC server '%s': the port must be a number in 1..65535", endpoint.c_str());
    }
    e.port = static_cast<int>(p);
    return e;
}

// IPv4 only, like ggml's transport.
sockaddr_in resolve(const std::string & endpoint) {
    const Endpoint e = split_endpoint(endpoint);
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    const int rc = getaddrinfo(e.host.c_str(), nullptr, &hints, &found);
    if (rc != 0 || found == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s: cannot resolve host '%s' (%s)", endpoint.c_str(), e.host.c_str(),
              gai_strerror(rc));
    }
    sockaddr_in addr = *reinterpret_cast<sockaddr_in *>(found->ai_addr);
    freeaddrinfo(found);
    addr.sin_port = htons(static_cast<uint16_t>(e.port));
    return addr;
}

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point deadline) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return ms > 0 ? static_cast<int>(ms) : 0;
}

// Sends or receives exactly `n` bytes before the deadline; false on timeout, error or a closed peer.
bool io_exact(int fd, void * buf, size_t n, bool sending, Clock::time_point deadline, bool & closed) {
    uint8_t * p = static_cast<uint8_t *>(buf);
    closed = false;
    while (n > 0) {
        pollfd pfd{fd, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
        const int ready = poll(&pfd, 1, ms_left(deadline));
        if (ready <= 0) {
            return false;
        }
        const ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k == 0) {
            closed = true;
            return false;
        }
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            closed = true;
            return false;
        }
        p += k;
        n -= static_cast<size_t>(k);
    }
    return true;
}

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) {
            close(fd);
        }
    }
};

}  // namespace

bool rpc_available() { return ggml_backend_reg_by_name("RPC") != nullptr; }

std::vector<std::string> parse_rpc_endpoints(const char * list) {
    std::vector<std::string> out = split_list(list);
    for (const std::string & item : out) {
        split_endpoint(item);  // checks the shape
    }
    return out;
}

void probe_rpc_server(const std::string & endpoint) {
    const sockaddr_in addr = resolve(endpoint);
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(kRpcProbeTimeoutS);
    Fd s;
    s.fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s.fd < 0) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s: cannot create a socket (%s)", endpoint.c_str(), std::strerror(errno));
    }
    fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL, 0) | O_NONBLOCK);
    int rc = connect(s.fd, reinterpret_cast<const sockaddr *>(&addr), sizeof(addr));
    if (rc < 0 && errno == EINPROGRESS) {
        pollfd pfd{s.fd, POLLOUT, 0};
        if (poll(&pfd, 1, ms_left(deadline)) <= 0) {
            raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s is unreachable: no connection within %d s (hint: is "
                  "`diffgemma-cpp rpc-server` running there, and is the port forwarded?)", endpoint.c_str(),
                  kRpcProbeTimeoutS);
        }
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
        errno = err;
    }
    if (rc < 0) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s is unreachable: %s (hint: start it with `diffgemma-cpp rpc-server "
              "--port %d` on that machine)", endpoint.c_str(), std::strerror(errno), ntohs(addr.sin_port));
    }
    uint8_t request[1 + 8 + kCapsSize] = {};
    request[0] = kCmdHello;
    const uint64_t caps_size = kCapsSize;
    std::memcpy(request + 1, &caps_size, sizeof(caps_size));
    bool closed = false;
    uint64_t reply_size = 0;
    uint8_t reply[kHelloReplySize];
    const bool sent = io_exact(s.fd, request, sizeof(request), true, deadline, closed);
    const bool got_size = sent && io_exact(s.fd, &reply_size, sizeof(reply_size), false, deadline, closed);
    if (!got_size) {
        if (closed) {
            raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s closed the connection without answering the ggml RPC hello: "
                  "not a ggml RPC server, or one of another protocol version", endpoint.c_str());
        }
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s did not answer the ggml RPC hello within %d s: it is busy with "
              "another client (a ggml RPC server serves one at a time), or the port belongs to something else",
              endpoint.c_str(), kRpcProbeTimeoutS);
    }
    if (reply_size != kHelloReplySize) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s answered something that is not a ggml RPC hello (a reply of %llu "
              "bytes, expected %zu): another service is listening on that port", endpoint.c_str(),
              static_cast<unsigned long long>(reply_size), kHelloReplySize);
    }
    if (!io_exact(s.fd, reply, sizeof(reply), false, deadline, closed)) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s broke off its hello reply", endpoint.c_str());
    }
    if (reply[0] != kProtoMajor || reply[1] > kProtoMinor) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s speaks ggml RPC protocol %d.%d.%d; this ggml speaks %d.%d (hint: "
              "run the same libggml-python version on both machines)", endpoint.c_str(), reply[0], reply[1], reply[2],
              kProtoMajor, kProtoMinor);
    }
}

void add_rpc_server(const std::string & endpoint) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_registered.count(endpoint) != 0) {
        return;
    }
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    using AddServer = ggml_backend_reg_t (*)(const char *);
    AddServer add = rpc != nullptr
        ? reinterpret_cast<AddServer>(ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server")) : nullptr;
    if (add == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s given, but this ggml has no RPC backend (hint: "
              "scripts/build_ggml.sh rpc builds libggml-python with GGML_RPC=ON, then reinstall diffgemma-cpp)",
              endpoint.c_str());
    }
    const sockaddr_in addr = resolve(endpoint);
    probe_rpc_server(endpoint);
    // A server that dies makes ggml's next send() raise SIGPIPE, whose default action kills the process.
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        std::signal(SIGPIPE, SIG_IGN);
        log(DIFFGEMMA_LOG_INFO, "SIGPIPE is now ignored: a lost RPC server must fail a call, not kill the process");
    }
    ggml_backend_reg_t server;
    {
        RemoteFaultScope faults;
        server = add(endpoint.c_str());
    }
    if (server == nullptr || ggml_backend_reg_dev_count(server) == 0) {
        raise(DIFFGEMMA_ERR_BACKEND, "RPC server %s offers no device", endpoint.c_str());
    }
    ggml_backend_register(server);
    g_registered.insert(endpoint);
    g_any_registered.store(true);
    std::lock_guard<std::mutex> addr_lock(g_addr_mutex);
    g_registered_addrs.push_back(addr);
}

void note_compute_pass(double seconds) {
    if (!g_any_registered.load()) {
        return;
    }
    int timeout;
    {
        std::lock_guard<std::mutex> lock(g_pass_mutex);
        if (seconds > g_slowest_pass_s) {
            g_slowest_pass_s = seconds;
        }
        timeout = std::max(kRpcStallTimeoutS, static_cast<int>(std::ceil(kRpcPassMargin * g_slowest_pass_s)));
    }
    if (g_io_timeout_s.exchange(timeout) != timeout) {
        set_rpc_socket_timeouts();
    }
}

void set_rpc_socket_timeouts() {
    const timeval tv{g_io_timeout_s.load(), 0};
    for_each_rpc_socket([&tv](int fd) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    });
}

RemoteFaultScope::RemoteFaultScope() {
    static std::once_flag installed;
    std::call_once(installed, [] { ggml_set_abort_callback(on_ggml_abort); });
    ++t_fault_scopes;
}

RemoteFaultScope::~RemoteFaultScope() { --t_fault_scopes; }

void free_remote_quietly(const std::function<void()> & free_fn) {
    RemoteFaultScope faults;
    try {
        free_fn();
    } catch (const Error & e) {
        log(DIFFGEMMA_LOG_WARN, "skipped freeing remote memory: %s", e.message.c_str());
    }
}

}  // namespace dg

extern "C" {

int32_t diffgemma_rpc_available(void) { return dg::rpc_available() ? 1 : 0; }

int32_t diffgemma_rpc_add_servers(const char * endpoints) {
    return dg::guard([&]() -> int32_t {
        for (const std::string & e : dg::parse_rpc_endpoints(endpoints)) {
            dg::add_rpc_server(e);
        }
        return DIFFGEMMA_OK;
    });
}

int32_t diffgemma_rpc_serve(const char * host, int32_t port, const char * devices, int32_t n_threads,
                            int32_t allow_remote) {
    if (host == nullptr || port < 1 || port > 65535) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_rpc_serve: a host and a port in 1..65535 are needed");
    }
    return dg::guard([&]() -> int32_t {
        std::string ip = std::strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
        in_addr a{};
        if (inet_pton(AF_INET, ip.c_str(), &a) != 1) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "rpc-server --host %s: give a numeric IPv4 address (ggml's RPC "
                      "transport binds IPv4 only), e.g. 127.0.0.1", host);
        }
        const bool loopback = (ntohl(a.s_addr) >> 24) == 127;
        if (!loopback && !allow_remote) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "refusing to serve on %s: ggml RPC has no authentication and no "
                      "encryption, and any peer that reaches the port can read and write this machine's device memory "
                      "and run graphs on it. Serve on 127.0.0.1 and reach it through an SSH tunnel, or pass "
                      "--allow-remote (allow_remote=1) on a private network you trust", host);
        }
        ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
        using StartServer = void (*)(const char *, const char *, size_t, size_t, ggml_backend_dev_t *);
        StartServer start = rpc != nullptr
            ? reinterpret_cast<StartServer>(ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_start_server"))
            : nullptr;
        if (start == nullptr) {
            dg::raise(DIFFGEMMA_ERR_BACKEND, "this ggml has no RPC backend (hint: scripts/build_ggml.sh rpc builds "
                      "libggml-python with GGML_RPC=ON, then reinstall diffgemma-cpp)");
        }
        std::vector<ggml_backend_dev_t> devs;
        for (const std::string & name : dg::split_list(devices)) {
            ggml_backend_dev_t d = ggml_backend_dev_by_name(name.c_str());
            if (d == nullptr) {
                std::string known;
                for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
                    known += (i ? ", " : "") + std::string(ggml_backend_dev_name(ggml_backend_dev_get(i)));
                }
                dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "no device '%s' to serve (devices: %s)", name.c_str(), known.c_str());
            }
            devs.push_back(d);
        }
        if (devs.empty()) {  // every GPU, else the CPU (llama.cpp's rpc-server default)
            for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
                ggml_backend_dev_t d = ggml_backend_dev_get(i);
                const auto type = ggml_backend_dev_type(d);
                if (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
                    devs.push_back(d);
                }
            }
            if (devs.empty()) {
                devs.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
            }
        }
        const std::string endpoint = dg::format("%s:%d", ip.c_str(), port);
        const size_t threads = static_cast<size_t>(n_threads > 0 ? n_threads : dg::default_thread_count());
        start(endpoint.c_str(), nullptr, threads, devs.size(), devs.data());  // returns only when it cannot serve
        dg::raise(DIFFGEMMA_ERR_BACKEND, "cannot serve on %s (is the port already in use?)", endpoint.c_str());
    });
}

}  // extern "C"
