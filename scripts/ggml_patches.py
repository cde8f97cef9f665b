"""Our two source patches to the pinned ggml sdist (libggml-python 0.20.2.post1), applied by build_ggml.sh.

    python scripts/ggml_patches.py rpc SRC_DIR      # always: several RPC servers in one graph
    python scripts/ggml_patches.py vulkan SRC_DIR   # only where the Vulkan headers lack VK_EXT_layer_settings

Each refuses (exit 1) a source it was not written for, instead of patching the wrong lines.
"""
from __future__ import annotations

import sys
from pathlib import Path


def _replace_once(text: str, old: str, new: str, path: Path) -> str:
    if text.count(old) != 1:
        sys.exit(f"ggml_patches: {path} is not the ggml 0.20.2 this patch was written for ({old.strip()[:60]!r})")
    return text.replace(old, new)


def patch_rpc(src: Path) -> None:
    """ggml 0.20.2's RPC client puts, in the graph it sends one server, the remote addresses of tensors that
    another server holds (the scheduler's views of a split's inputs); that server rejects the graph ("[create_node]
    invalid data ptr") and drops the connection. The client then sends such tensors without an address, as newer
    ggml does: the receiving server only ever reads its own copies of them."""
    path = src / "ggml/src/ggml-rpc/ggml-rpc.cpp"
    text = path.read_text()
    text = _replace_once(text, "static void add_tensor(ggml_tensor * tensor,",
                         "// diffgemma (scripts/ggml_patches.py): the server the graph being serialized goes to\n"
                         "static thread_local const socket_t * dg_graph_socket = nullptr;\n\n"
                         "static void add_tensor(ggml_tensor * tensor,", path)
    text = _replace_once(text, "    tensors.push_back(serialize_tensor(tensor));\n",
                         "    rpc_tensor wire = serialize_tensor(tensor);\n"
                         "    if (wire.buffer != 0 && dg_graph_socket != nullptr &&\n"
                         "        ((ggml_backend_rpc_buffer_context *) tensor->buffer->context)->sock.get() != dg_graph_socket) {\n"
                         "        wire.buffer = 0;  // another server's buffer: no address this one could use\n"
                         "        wire.data = 0;\n"
                         "    }\n"
                         "    tensors.push_back(wire);\n", path)
    call = "        serialize_graph(rpc_ctx->device, cgraph, input);\n"
    text = _replace_once(text, call, "        dg_graph_socket = get_socket(rpc_ctx->endpoint).get();\n" + call +
                         "        dg_graph_socket = nullptr;\n", path)
    path.write_text(text)


def patch_vulkan(src: Path) -> None:
    """ggml-vulkan fills a VK_EXT_layer_settings struct (only validation builds use it) that older Vulkan headers
    (Debian 12: 1.3.239) predate: without the extension, the instance is created without it."""
    path = src / "ggml/src/ggml-vulkan/ggml-vulkan.cpp"
    text = path.read_text()
    first = "    VkBool32 enable_best_practice = layer_settings;\n"
    last = "&layer_setting_info);\n"
    start = text.find(first)
    end = text.find(last, start) + len(last) if start >= 0 else -1
    if start < 0 or end < len(last):
        sys.exit(f"ggml_patches: {path} is not the ggml 0.20.2 this patch was written for")
    plain = "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);\n"
    text = text[:start] + "#ifdef VK_EXT_layer_settings\n" + text[start:end] + "#else\n" + plain + "#endif\n" + text[end:]
    path.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("rpc", "vulkan"):
        sys.exit(__doc__)
    {"rpc": patch_rpc, "vulkan": patch_vulkan}[sys.argv[1]](Path(sys.argv[2]))
