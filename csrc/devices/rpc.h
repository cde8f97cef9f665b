// ggml RPC (remote devices) for the engine: registering servers, serving this machine's devices, and the
// guards that keep a lost server from killing or hanging the process.
//
// What ggml 0.20.2's RPC client does on a network fault (ggml-rpc.cpp, transport.cpp), and our answer:
//   - connect() to an unreachable host blocks for the kernel's SYN timeout (minutes): we first probe every
//     endpoint ourselves with a non-blocking connect and a deadline (probe_rpc_server).
//   - anything but a well-formed reply (a server that died, garbage on the port, a version mismatch in the
//     HELLO size) ends in GGML_ABORT, i.e. abort(): ggml calls its abort callback first, and ours throws a
//     dg::Error when the message comes from ggml-rpc and the thread is inside an API call that catches it
//     (RemoteFaultScope, entered by dg::guard). Every RPC call of the client runs on the calling thread.
//   - a server that stops answering makes recv() block forever (no socket timeouts): once ggml has connected,
//     we set receive and send timeouts on its sockets (set_rpc_socket_timeouts), so a stalled read fails and
//     takes the path above. The timeout bounds one recv()/send() call, i.e. the silence between two pieces of
//     data, so a large transfer that keeps moving never trips it at any speed; what legitimately waits in
//     silence is a server computing a graph (ggml's GRAPH_COMPUTE has no reply: the next read waits for it).
//     So the allowed silence follows the passes this process has seen (note_compute_pass): 30 s until one has
//     run, then 4 x the slowest pass so far, at least 8 s; a hung (stopped) server fails a call within that.
//   - send() on a closed socket raises SIGPIPE, which kills a process that did not ignore it (Python does):
//     registering a server sets SIGPIPE to ignored if it was still at its default.
// At a fault the process's connections to RPC servers are shut down (a hung server would otherwise cost every
// later call and free another timeout): the models on them lose their remote buffers, every later call fails
// fast with the same error, and freeing a model does not block (failing frees are skipped: free_remote_quietly).
#pragma once

#include "ggml-backend.h"

#include <functional>
#include <string>
#include <vector>

namespace dg {

// Seconds a probe may take (connect + HELLO); a registered server may stay silent during a call: before any
// compute pass has completed in this process, and at least after one has; the slowest pass's multiple.
constexpr int kRpcProbeTimeoutS = 5;
constexpr int kRpcIoTimeoutS = 30;
constexpr int kRpcStallTimeoutS = 8;
constexpr int kRpcPassMargin = 4;

// True when the installed ggml has the RPC backend (built with GGML_RPC=ON).
bool rpc_available();

// "host:port,host:port" -> endpoints, checked for shape (host, port 1..65535). Throws dg::Error.
std::vector<std::string> parse_rpc_endpoints(const char * list);

// Connects to `endpoint` within kRpcProbeTimeoutS and checks that a ggml RPC server of our protocol version
// answers the HELLO. Throws dg::Error (DIFFGEMMA_ERR_BACKEND) naming the endpoint and what went wrong.
void probe_rpc_server(const std::string & endpoint);

// Probes, then registers the server's devices with ggml (once per endpoint and process): they appear in
// list_gpus() as "RPCn (host:port)". Throws dg::Error.
void add_rpc_server(const std::string & endpoint);

// Sets the current receive/send timeout (kRpcIoTimeoutS until note_compute_pass lowers it) on every socket of
// this process connected to a registered server (ggml opens them lazily and keeps them while buffers exist).
void set_rpc_socket_timeouts();

// After a compute pass that took `seconds` (wall time; it bounds any server's compute inside it): the allowed
// silence becomes max(kRpcStallTimeoutS, kRpcPassMargin x the slowest pass so far), applied to the sockets when
// it changes. Cheap when no server is registered.
void note_compute_pass(double seconds);

// Runs a free of something that may live on a remote device; a fault there is logged and skipped (the
// remote memory went with its server), so destructors never throw or abort.
void free_remote_quietly(const std::function<void()> & free_fn);

}  // namespace dg
