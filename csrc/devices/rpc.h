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
//     takes the path above.
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

// Seconds a probe may take (connect + HELLO), and a registered server may stay silent during a call.
constexpr int kRpcProbeTimeoutS = 5;
constexpr int kRpcIoTimeoutS = 30;

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

// Sets kRpcIoTimeoutS receive/send timeouts on every socket of this process connected to a registered
// server (ggml opens them lazily and keeps them while buffers exist).
void set_rpc_socket_timeouts();

// Runs a free of something that may live on a remote device; a fault there is logged and skipped (the
// remote memory went with its server), so destructors never throw or abort.
void free_remote_quietly(const std::function<void()> & free_fn);

}  // namespace dg
