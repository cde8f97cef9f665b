// The devices the engine can offload to: ggml's devices of type GPU (discrete or integrated), in ggml's order;
// registered RPC servers' devices (rpc.h) are among them, after the local ones ("RPC0 (127.0.0.1:50052)").
//
// Machines without a GPU can still exercise every offload path (placement, device buffers, the graphs
// without CPU custom ops, the memory plan and its errors): with DIFFGEMMA_TEST_GPU_MIB=N set, the list is one
// stand-in "GPU" with N MiB of free memory whose buffers are host memory and whose work runs on the CPU
// backend; N,M,... makes several stand-ins (the multi-device planning). It exists for the tests; nothing else
// should set it. DIFFGEMMA_TEST_GPU_GRAPH=1 also gives the
// stand-in the exact graph a real GPU gets (ggml's GEGLU instead of our exact CPU one; diffgemma_context).
#pragma once

#include "ggml-backend.h"

#include <cstddef>
#include <string>
#include <vector>

namespace dg {

struct Gpu {
    ggml_backend_dev_t dev = nullptr;  // the ggml device (the CPU device for the stand-in)
    bool stand_in = false;
    size_t stand_in_bytes = 0;         // the stand-in's memory
    bool remote = false;               // an RPC server's device (rpc.h)
    std::string id;                    // what `devices` names it by: ggml's device name ("CUDA0", "RPC1"), "StandIn0"
    std::string name;                  // "CUDA0 (NVIDIA H100 80GB HBM3)"
};

struct GpuMemory {
    size_t free = 0;
    size_t total = 0;
};

std::vector<Gpu> list_gpus();
GpuMemory gpu_memory(const Gpu & gpu);

// Where tensors placed on the GPU are allocated (the stand-in: a host buffer type).
ggml_backend_buffer_type_t gpu_buffer_type(const Gpu & gpu);

// The backend that computes on the GPU; nullptr for the stand-in, whose work runs on the CPU backend.
// Throws dg::Error when the device cannot be initialised.
ggml_backend_t gpu_backend_init(const Gpu & gpu);

// "CUDA0 (NVIDIA H100), 79012 of 81559 MiB free"
std::string gpu_description(const Gpu & gpu);

// True for a CUDA device in a build with our CUDA sampler kernels (DIFFGEMMA_CUDA): its head samples there with
// them (gpu_step_sampler.h); any other real device samples with ggml's ops, the stand-in on the host.
bool runs_our_cuda_kernels(const Gpu & gpu);

}  // namespace dg
