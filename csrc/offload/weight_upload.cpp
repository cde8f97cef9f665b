// Uploads the weights a placement offloads: one allocation per device (WeightStore::place_on), `Weights`
// repointed at the copies.
#include "core/errors.h"
#include "devices/rpc.h"
#include "offload/placement.h"

namespace dg {

void place_weights(const HParams & hp, const Placement & pl, WeightStore & store, Weights & w) {
    if (!pl.use_gpu) {
        return;
    }
    for (int d = 0; d < static_cast<int>(pl.devices.size()); ++d) {
        // The slots to repoint: device d's layers' tensors (their experts unless kept on the host), and the head.
        std::vector<ggml_tensor **> slots;
        for (int il = 0; il < hp.n_layer; ++il) {
            LayerWeights & l = w.layers[static_cast<size_t>(il)];
            for (ggml_tensor * LayerWeights::* m : kLayerTensors) {
                if (l.*m != nullptr && pl.offloads_to(il, m, d)) {
                    slots.push_back(&(l.*m));
                }
            }
        }
        if (pl.head_on_gpu && pl.head_device == d) {
            slots.push_back(&w.head);
            for (ggml_tensor * Weights::* m : kHeadTensors) {
                if (w.*m != nullptr) {
                    slots.push_back(&(w.*m));
                }
            }
        }
        if (!slots.empty()) {
            store.place_on(pl.devices[static_cast<size_t>(d)], slots, w);
        }
    }
    // The host copy of the transposed embedding has no reader left once the head is offloaded.
    if (pl.head_on_gpu) {
        store.free_host_embd_t();
    }
    set_rpc_socket_timeouts();
}

void place_vision_weights(const Placement & pl, WeightStore & store, Weights & w, VisionModel & vision) {
    if (!pl.use_gpu) {
        return;
    }
    int d = pl.head_on_gpu ? pl.head_device : -1;
    for (int dev : pl.layer_device) {
        if (dev >= 0) {
            d = dev;
            break;
        }
    }
    if (d < 0) {
        return;
    }
    std::vector<ggml_tensor **> slots = vision_tensor_slots(vision.w);
    size_t bytes = 0;
    for (ggml_tensor ** t : slots) {
        bytes += ggml_nbytes(*t);
    }
    const Gpu & gpu = pl.devices[static_cast<size_t>(d)];
    store.place_on(gpu, slots, w);
    log(DIFFGEMMA_LOG_INFO, "the vision projector's weights (%.1f MiB) are on %s", bytes / 1048576.0, gpu.name.c_str());
    set_rpc_socket_timeouts();
}

}  // namespace dg
