// Internal definition of the opaque diffgemma_model handle (the context is context.h).
#pragma once

#include "diffgemma.h"
#include "loader/hparams.h"
#include "loader/mmproj.h"
#include "loader/weights.h"
#include "offload/placement.h"

#include "ggml-backend.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

struct gguf_context;

struct diffgemma_vocab;

struct diffgemma_model {
    std::string path;
    dg::HParams hp;
    dg::Weights w;
    dg::WeightStore store;
    dg::Placement placement;             // what is offloaded to which GPU (CPU only by default)
    std::string memory_plan;             // the plan printed at load ("" when nothing is offloaded)
    gguf_context * gguf = nullptr;       // metadata (kept for diffgemma_model_meta_*)
    ggml_context * meta_ctx = nullptr;   // tensor descriptors bound to the mapping
    std::unique_ptr<diffgemma_vocab> vocab;  // nullptr when the GGUF has no tokenizer
    std::vector<std::pair<std::string, std::string>> meta;  // metadata rendered as strings
    std::unique_ptr<dg::VisionModel> vision;  // the projector (model params mmproj_path), nullptr when text only
    ~diffgemma_model();
};
