"""Layers shared over several offload devices (issue 15): tensor_split, the split by free memory, main_gpu, devices,
the memory plan per device, the "does not fit" error naming a split that fits, and fit across devices.

Runs on two stand-in GPUs (DIFFGEMMA_TEST_GPU_MIB=A,B: gpu_devices.h): their buffers are host memory and their
work runs on the CPU backend, so the logits must match one device exactly; the planning arithmetic is the point.
The same placements over real ggml RPC servers are in tests/test_rpc.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import engine_fixtures as fx
from diffgemma_cpp import Model, errors
from diffgemma_cpp._native import ffi, lib

STAND_IN = "DIFFGEMMA_TEST_GPU_MIB"
NAME = "wide:trained"  # 3 layers


def _logits(path, **kw):
    with Model(path, n_threads=2, **kw) as m:
        m.encode([2, 5, 9, 11])
        canvas = list(range(3, 3 + m.canvas_length))
        plain = m.decoder_logits(canvas)
        sc = m.decoder_logits(canvas, plain / 0.7)
        return plain, sc, m.memory_plan


def _ranges(plan: str) -> dict:
    """{device index: (first layer, last layer)} from the plan's per-device lines."""
    return {int(d): (int(a), int(b)) for d, a, b in re.findall(r"\n  GPU (\d+): .*?: layers (\d+)-(\d+)", plan)}


def test_two_stand_ins_are_listed(monkeypatch):
    import diffgemma_cpp

    monkeypatch.setenv(STAND_IN, "3000,1000")
    assert diffgemma_cpp.gpus() == ["stand-in GPU 0 (the CPU, DIFFGEMMA_TEST_GPU_MIB), 3000 of 3000 MiB free",
                                    "stand-in GPU 1 (the CPU, DIFFGEMMA_TEST_GPU_MIB), 1000 of 1000 MiB free"]


@pytest.mark.parametrize("kw,ranges,head", [
    (dict(n_gpu_layers=-1, tensor_split=[2, 1]), {0: (0, 1), 1: (2, 2)}, "head on GPU 1"),
    (dict(n_gpu_layers=-1, tensor_split=[1, 2]), {0: (0, 0), 1: (1, 2)}, "head on GPU 1"),
    (dict(n_gpu_layers=-1), {0: (0, 1), 1: (2, 2)}, "head on GPU 1"),           # by free memory, 3000:1000
    (dict(n_gpu_layers=2, tensor_split=[1, 1]), {0: (1, 1), 1: (2, 2)}, "head on the CPU"),
    (dict(n_gpu_layers=-1, tensor_split=[1, 1], cpu_moe=True), {0: (0, 1), 1: (2, 2)}, "head on GPU 1"),
    (dict(n_gpu_layers=-1, tensor_split=[1, 0]), {0: (0, 2)}, "head on the GPU"),  # a zero share: one device
    (dict(n_gpu_layers=-1, main_gpu=1), {1: (0, 2)}, "head on the GPU"),
    (dict(n_gpu_layers=-1, devices="StandIn1,StandIn0", tensor_split=[2, 1]), {1: (0, 1), 0: (2, 2)}, "head on GPU 0"),
])
def test_a_split_places_consecutive_layers_and_matches_one_device(monkeypatch, kw, ranges, head):
    """Stand-ins compute on the CPU backend: any split must give exactly the single device's logits."""
    path = fx.gguf(NAME, "f32")
    monkeypatch.setenv(STAND_IN, "3000,1000")
    plain, sc, plan = _logits(path, **kw)
    print(plan)
    assert _ranges(plan) == ranges, plan
    assert head in plan.split("\n")[0], plan
    one = dict(kw, main_gpu=0)
    one.pop("tensor_split", None)
    one.pop("devices", None)
    ref_plain, ref_sc, _ = _logits(path, **one)
    np.testing.assert_array_equal(plain, ref_plain)
    np.testing.assert_array_equal(sc, ref_sc)


def test_the_plan_counts_each_devices_share(monkeypatch):
    """Per device: its layers' weights, KV cache of its layers only, the head's bytes on the head's device only;
    the shares add up to the single-device plan's weights and KV."""
    path = fx.gguf(NAME, "f32")
    monkeypatch.setenv(STAND_IN, "3000,1000")

    def numbers(plan):
        rows = re.findall(r"weights ([\d.]+) MiB \(layers (\d+) MiB, experts (\d+) MiB, head (\d+) MiB\).*?"
                          r"KV cache (\d+) MiB at n_ctx \d+ \((\d+) MiB at the default", plan, re.S)
        return [tuple(float(x) for x in r) for r in rows]

    _, _, split_plan = _logits(path, n_gpu_layers=-1, tensor_split=[2, 1])
    _, _, one_plan = _logits(path, n_gpu_layers=-1, main_gpu=0)
    split, (one,) = numbers(split_plan), numbers(one_plan)
    assert len(split) == 2
    assert split[0][3] == 0 and split[1][3] == one[3]  # the head on the last layer's device only
    assert sum(r[0] for r in split) == pytest.approx(one[0], abs=0.11)  # printed with one decimal
    assert sum(r[5] for r in split) == pytest.approx(one[5], abs=1.01)  # KV at the default n_ctx, whole MiB


def test_kv_cache_of_a_split_has_the_same_slots(monkeypatch):
    path = fx.gguf(NAME, "f32")
    monkeypatch.setenv(STAND_IN, "3000,1000")
    with Model(path, n_ctx=512) as cpu, Model(path, n_ctx=512, n_gpu_layers=-1, tensor_split=[1, 1]) as split:
        assert split.kv_cache_bytes == cpu.kv_cache_bytes


def _need(plan: str, device: int) -> float:
    block = plan.split(f"\n  GPU {device}: ")[1]
    return float(block.split("needs ")[1].split(" MiB")[0])


def test_a_split_that_does_not_fit_names_one_that_does_and_fit_takes_it(monkeypatch):
    """GPU 1 too small for half the layers and the head: the error names the layers per device that fit (checked
    by loading with it), and fit=True loads exactly that split."""
    path = fx.gguf(NAME, "f32")
    monkeypatch.setenv(STAND_IN, "4096,4096")
    _, _, plan = _logits(path, n_gpu_layers=-1, tensor_split=[1, 2])
    small = int(_need(plan, 1)) - 3  # GPU 1 can hold its compute, the head and fewer layers than asked
    monkeypatch.setenv(STAND_IN, f"4096,{small}")
    with pytest.raises(errors.OutOfMemoryError) as e:
        Model(path, n_gpu_layers=-1, tensor_split=[1, 2])
    msg = str(e.value)
    assert "does not fit on GPU 1 (" in msg and "missing" in msg and "GPU 0 (" not in msg.split("\n")[0], msg
    hint = msg.rsplit("Hint: ", 1)[1]
    assert hint.startswith("tensor_split=") and hint.endswith("(or fit=1 / --fit takes it)"), hint
    counts = [int(c) for c in hint.split()[0].split("=")[1].split(",")]
    assert sum(counts) == 3 and counts[1] < 2, counts
    asked_plain, _, asked_plan = _logits(path, n_gpu_layers=-1, tensor_split=counts)
    fit_plain, _, fit_plan = _logits(path, n_gpu_layers=-1, tensor_split=[1, 2], fit=True)
    first, rest = fit_plan.split("\n", 1)
    assert first.startswith("fit: the offload asked for needs more memory than free on GPU 1") and "taking tensor_split=" in first
    assert rest == asked_plan
    np.testing.assert_array_equal(fit_plain, asked_plain)


def test_when_no_split_fits_the_hint_keeps_experts_on_the_host(monkeypatch):
    path = fx.gguf(NAME, "f32")
    monkeypatch.setenv(STAND_IN, "4096,4096")
    _, _, plan = _logits(path, n_gpu_layers=-1, tensor_split=[1, 1])
    tight = int(min(_need(plan, 0), _need(plan, 1))) - 6  # neither device holds its half with the experts
    monkeypatch.setenv(STAND_IN, f"{tight},{tight}")
    with pytest.raises(errors.OutOfMemoryError) as e:
        Model(path, n_gpu_layers=-1, tensor_split=[1, 1])
    hint = str(e.value).rsplit("Hint: ", 1)[1]
    assert hint.startswith("n_cpu_moe=") or hint.startswith("n_gpu_layers="), hint
    with Model(path, n_gpu_layers=-1, tensor_split=[1, 1], fit=True) as m:
        assert "experts of" in m.memory_plan.split("\n")[1], m.memory_plan


@pytest.mark.parametrize("kw,needle", [
    (dict(tensor_split=[1, 1, 1]), "tensor_split has 3 values, but there are 2 devices"),
    (dict(tensor_split=[0, 0]), "tensor_split must hold finite shares"),
    (dict(tensor_split=[1, -1]), "tensor_split must hold finite shares"),
    (dict(tensor_split="a,b"), "tensor_split must be a list of numbers"),
    (dict(tensor_split=[1, 1], main_gpu=0), "give one of them"),
    (dict(devices="CUDA7"), "no offload device 'CUDA7' (there are: StandIn0, StandIn1)"),
    (dict(devices="StandIn0,StandIn0"), "'StandIn0' is named twice"),
    (dict(main_gpu=-2), "main_gpu must be an integer >= -1"),
])
def test_bad_split_arguments_are_rejected(monkeypatch, kw, needle):
    monkeypatch.setenv(STAND_IN, "3000,1000")
    with pytest.raises(errors.InvalidArgumentError) as e:
        Model(fx.gguf(NAME, "f32"), n_gpu_layers=-1, **kw)
    assert needle in str(e.value)


def test_c_api_checks_the_split(monkeypatch):
    monkeypatch.setenv(STAND_IN, "3000,1000")
    path = str(fx.gguf(NAME, "f32")).encode()
    p = ffi.new("diffgemma_model_params *")
    lib.diffgemma_model_default_params(p)
    assert p.main_gpu == -1 and p.n_tensor_split == 0 and p.tensor_split == ffi.NULL and p.rpc_servers == ffi.NULL
    p.n_gpu_layers = -1
    split = ffi.new("float[]", [1.0, float("nan")])
    p.tensor_split, p.n_tensor_split = split, 2
    out = ffi.new("diffgemma_model **")
    assert lib.diffgemma_model_load(path, p, out) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT
    assert "tensor_split[1]=nan" in ffi.string(lib.diffgemma_last_error()).decode()
    p.tensor_split, p.n_tensor_split = ffi.NULL, 1
    assert lib.diffgemma_model_load(path, p, out) == lib.DIFFGEMMA_ERR_INVALID_ARGUMENT


def test_cli_split_options_reach_the_model(monkeypatch):
    import argparse

    import diffgemma_cpp
    from diffgemma_cpp import cli_text

    seen = {}
    monkeypatch.setattr(diffgemma_cpp, "Model", lambda path, **kw: seen.update(kw, path=path))
    parser = argparse.ArgumentParser()
    cli_text._add_model_options(parser)
    cli_text._load_model(parser.parse_args(["-m", "x.gguf", "-ngl", "-1", "-ts", "3,1", "-dev", "RPC0,CUDA0",
                                          "--rpc", "127.0.0.1:50052,127.0.0.1:50053"]))
    assert seen == dict(path="x.gguf", n_gpu_layers=-1, tensor_split="3,1", devices="RPC0,CUDA0",
                        rpc_servers="127.0.0.1:50052,127.0.0.1:50053")


def _release_shape_file(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import make_real_shape_gguf as mk

    # The released widths, heads and expert shapes (Q4_K_M mix); two layers and a small vocabulary and expert
    # count keep the file small. bench/README.md has the same plans at the full vocabulary.
    return mk.build(tmp_path_factory.mktemp("release") / "m.gguf", n_layers=2, n_vocab=4096, n_expert=8)["path"]


def test_release_shape_plans_add_up(monkeypatch, tmp_path_factory):
    """tensor_split over two 12 GB devices, and one 12 GB device with the experts on the host: each device's
    weights are exactly the bytes of its tensors in the file (plus the head's transposed copy), printed per device."""
    from gguf import GGUFReader

    path = _release_shape_file(tmp_path_factory)
    by_layer: dict = {}
    head = embd = 0
    reader = GGUFReader(path)
    for t in reader.tensors:
        if t.name.startswith("blk."):
            il = int(t.name.split(".")[1])
            kind = "experts" if "_exps" in t.name and "scale" not in t.name else "layers"
            by_layer.setdefault(il, {"layers": 0, "experts": 0})[kind] += int(t.n_bytes)
        elif t.name != "rope_freqs.weight":
            head += int(t.n_bytes)  # token_embd (the tied head), output_norm, self-conditioning
            embd = int(t.n_bytes) if t.name == "token_embd.weight" else embd
    n_vocab, n_embd = 4096, 2816
    head += n_vocab * n_embd * 2  # the transposed embedding for self-conditioning, bf16 on the device
    mib = 1 << 20

    def per_device(plan):
        return [tuple(float(x) for x in r) for r in re.findall(
            r"weights [\d.]+ [MG]iB \(layers (\d+) MiB, experts (\d+) MiB, head (\d+) MiB\)", plan)]

    monkeypatch.setenv(STAND_IN, "12288,12288")
    with Model(path, n_threads=2, n_ctx=512, n_gpu_layers=-1, tensor_split=[1, 1]) as m:
        plan = m.memory_plan
    print(plan)
    assert _ranges(plan) == {0: (0, 0), 1: (1, 1)}
    (l0, e0, h0), (l1, e1, h1) = per_device(plan)
    assert (l0, e0, h0) == (round(by_layer[0]["layers"] / mib), round(by_layer[0]["experts"] / mib), 0)
    assert (l1, e1, h1) == (round(by_layer[1]["layers"] / mib), round(by_layer[1]["experts"] / mib), round(head / mib))

    monkeypatch.setenv(STAND_IN, "12288")
    with Model(path, n_threads=2, n_ctx=512, n_gpu_layers=-1, cpu_moe=True) as m:
        plan = m.memory_plan
    print(plan)
    ((l, e, h),) = per_device(plan)
    assert (l, e, h) == (round((by_layer[0]["layers"] + by_layer[1]["layers"]) / mib), 0, round(head / mib))
    host = float(plan.split("host memory: ")[1].split(" MiB")[0])  # the input embedding and the experts
    experts = by_layer[0]["experts"] + by_layer[1]["experts"]
    assert host == pytest.approx((embd + experts) / mib, abs=0.051)
