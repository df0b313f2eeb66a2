"""Opening users' SD checkpoints: layouts and detection, pickle safety, bad files, precision, memory hygiene.

All checkpoints are tiny random models written by the tests (sd_checkpoint_factory.py); full-size layouts are only
ever built on the meta device.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import struct
import sys
import types
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict, sd2_config, sd2_state_dict
from studio.engine import archives, devices
from studio.engine.checkpoint_layout import detect_text, detect_unet, detect_vae
from studio.engine.checkpoints import looks_like_v_prediction
from studio.engine.loading import ModelLoadError, load_model, save_studio_file
from studio.engine.model import LatentDiffusion
from studio.engine.text_encoder import TextEncoderConfig
from studio.engine.unet import UNetConfig
from studio.engine.vae import VAEConfig

CPU = torch.device("cpu")
TEXT = "cond_stage_model.transformer.text_model."


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a busy neighbour
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd1():
    model = random_model(sd1_config(), seed=11)
    return model, sd1_state_dict(model)


@pytest.fixture(scope="module")
def sd1_file(sd1, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd1") / "tiny-sd1.safetensors"
    save_file(sd1[1], str(path))
    return path


def load(path, **kwargs):
    return load_model(str(path), CPU, torch.float32, **kwargs)


def assert_same_weights(model: LatentDiffusion, reference: LatentDiffusion) -> None:
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key


# -- layouts and detection ----------------------------------------------------------------------------------------


def test_sd1_safetensors_loads_by_shape(sd1, sd1_file):
    model = load(sd1_file)
    assert model.config.unet == sd1[0].config.unet
    assert model.config.vae == sd1[0].config.vae
    assert model.config.text == sd1[0].config.text
    assert (model.config.prediction, model.config.pad_id, model.config.default_size) == ("epsilon", 49407, 512)
    assert model.config.name == "tiny-sd1"
    assert_same_weights(model, sd1[0])
    schedule = model.config.schedule  # the original release's defaults
    assert (schedule.kind, schedule.beta_start, schedule.beta_end, schedule.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)
    assert (schedule.spacing, schedule.steps_offset) == ("leading", 1)
    assert model.schedule.final_alpha_cumprod == pytest.approx(float(model.schedule.alphas_cumprod[0]))
    assert model.config.vae.scaling_factor == 0.18215


def test_full_size_layouts_are_detected_from_shapes():
    """SD1.5 and SD2.x shapes (built on the meta device) give back the stock configs."""
    for unet, text, activation in ((UNetConfig.sd1(), TextEncoderConfig.clip_l(), "quick_gelu"),
                                   (UNetConfig.sd2(), TextEncoderConfig.sd2(), "gelu")):
        from studio.engine.model import ModelConfig

        with torch.device("meta"):
            model = LatentDiffusion(ModelConfig(unet=unet, text=text))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert detect_unet(shapes) == unet
        assert detect_vae(shapes) == VAEConfig.sd()
        assert detect_text(shapes, activation) == text


def test_sd1_lightning_ckpt_with_training_metadata(sd1, tmp_path):
    """An old-style .ckpt: state_dict wrapped with global_step, a Lightning callback object and numpy scalars.
    The callback class is only importable while saving; loading must not need (or run) it."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        sys.modules[name] = types.ModuleType(name)

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"
            self.best_model_score = np.float64(0.25)

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    path = tmp_path / "sd-v1-tiny.ckpt"
    try:
        torch.save({"state_dict": sd1[1], "global_step": 470000, "epoch": 3,
                    "callbacks": {ModelCheckpoint: ModelCheckpoint()}}, path)
    finally:
        for name in names:
            del sys.modules[name]
    assert_same_weights(load(path), sd1[0])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_plain_ckpt_loads(sd1, tmp_path, legacy):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": sd1[1]}, path, _use_new_zipfile_serialization=not legacy)
    assert_same_weights(load(path), sd1[0])


def test_sd2_open_clip_layout_maps_onto_clip(tmp_path):
    reference = random_model(sd2_config(), seed=12)
    checkpoint = sd2_state_dict(reference)
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in checkpoint  # 3 stored, 2 used
    path = tmp_path / "tiny-sd2.safetensors"
    save_file(checkpoint, str(path))
    model = load(path, prediction="epsilon")
    assert model.config.text == reference.config.text  # gelu, 2 layers (the penultimate output), width 64
    assert model.config.unet == reference.config.unet  # linear projections, 64-wide heads, upcast attention
    assert model.config.pad_id == 0
    assert_same_weights(model, reference)
    q = model.text_encoder.text_model.encoder.layers[1].self_attn.q_proj.weight
    assert torch.equal(q, checkpoint["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"][:64])


def test_prediction_override_and_sidecar_yaml(tmp_path):
    reference = random_model(sd2_config(), seed=12)
    path = tmp_path / "sd2-768-v.safetensors"
    save_file(sd2_state_dict(reference), str(path))
    assert load(path, prediction="v").config.prediction == "v"
    assert load(path, prediction="v").config.default_size == 512  # 768 is for full-width SD2 (context 1024)
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n    linear_start: 0.00085\n')
    assert load(path).config.prediction == "v"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert load(path).config.prediction == "epsilon"
    assert load(path, prediction="v").config.prediction == "v"  # the user's word wins


def test_v_prediction_probe():
    """A1111's probe: at t = 999 a v-model's output on a 0.5 latent is far below it, an ε-model's is not."""
    model = random_model(sd1_config(), seed=3)
    with torch.no_grad():
        model.unet.out[2].weight.zero_()
        model.unet.out[2].bias.fill_(-2.0)  # output ≡ −2: mean(out − x) = −2.5
        assert looks_like_v_prediction(model)
        model.unet.out[2].bias.fill_(0.0)
        assert not looks_like_v_prediction(model)


def test_inpainting_9_channel_sd1(tmp_path):
    reference = random_model(sd1_config(in_channels=9), seed=13)
    path = tmp_path / "sd-1.5-inpainting-tiny.safetensors"
    save_file(sd1_state_dict(reference), str(path))
    model = load(path)
    assert model.is_inpainting and model.config.unet.in_channels == 9
    assert_same_weights(model, reference)


def test_old_sd1_text_encoder_without_text_model_level(sd1, tmp_path):
    old = {k.replace(TEXT, "cond_stage_model.transformer."): v for k, v in sd1[1].items()}
    path = tmp_path / "old.safetensors"
    save_file(old, str(path))
    assert_same_weights(load(path), sd1[0])


def test_studio_file_still_opens(tmp_path):
    reference = random_model(sd1_config(), seed=14)
    path = tmp_path / "ours.safetensors"
    save_studio_file(reference, path, dtype=torch.float32)
    model = load(path)
    assert model.config == reference.config
    assert_same_weights(model, reference)


@pytest.mark.parametrize("dtype, native_bf16, vae_dtype", [
    (torch.bfloat16, True, torch.bfloat16),  # "fast" on a CPU that runs bf16: the VAE too (docs/numerics.md)
    (torch.bfloat16, False, torch.float32),  # emulated bf16 convolutions are slow: the VAE stays fp32
    (torch.float16, True, torch.float32),  # fp16 convolutions are slow or missing on the CPU
])
def test_loads_straight_into_the_target_dtype(sd1_file, monkeypatch, dtype, native_bf16, vae_dtype):
    monkeypatch.setattr(devices, "cpu_runs_bf16_natively", lambda: native_bf16)
    model = load_model(str(sd1_file), CPU, dtype)
    assert {p.dtype for p in model.model.parameters()} | {p.dtype for p in model.cond_stage_model.parameters()} == {dtype}
    assert {p.dtype for p in model.first_stage_model.parameters()} == {vae_dtype}


def test_fp16_file_loads_as_fp32(sd1, tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd1[1].items()}, str(path))
    model = load(path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ref = sd1[0].unet.out[2].weight
    assert torch.equal(model.unet.out[2].weight, ref.half().float())


# -- families we do not run: named, not a stack trace ------------------------------------------------------------

UNSUPPORTED = {
    "SDXL": {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (4, 4),
             "model.diffusion_model.input_blocks.0.0.weight": (4, 4)},
    "SD3": {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4, 4)},
    "Flux": {"double_blocks.0.img_attn.qkv.weight": (4, 4)},
    "LoRA": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)},
    "VAE": {"encoder.conv_in.weight": (4, 3, 3, 3), "decoder.conv_in.weight": (4, 4, 3, 3)},
    "textual-inversion": {"emb_params": (2, 4)},
    "ControlNet": {"control_model.input_hint_block.0.weight": (4, 4)},
}


@pytest.mark.parametrize("family", list(UNSUPPORTED))
def test_other_families_are_named(tmp_path, family):
    path = tmp_path / f"{family}.safetensors"
    save_file({k: torch.zeros(s) for k, s in UNSUPPORTED[family].items()}, str(path))
    with pytest.raises(ModelLoadError, match=family) as info:
        load(path)
    assert path.name in str(info.value) and "not supported" in str(info.value)


def test_instruct_pix2pix_channels_are_named(tmp_path):
    path = tmp_path / "ip2p.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(in_channels=8), seed=1)), str(path))
    with pytest.raises(ModelLoadError, match="instruct-pix2pix"):
        load(path)


def test_diffusers_sdxl_folder_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match="SDXL"):
        load(tmp_path)


def test_folder_that_is_no_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load(tmp_path)


# -- pickles never run code ---------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_malicious_pickle_is_refused_without_running(sd1, tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}, "x": _Payload(marker)}
    path = tmp_path / "evil.ckpt"
    if kind == "raw-pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "torch-zip")
    with pytest.raises(ModelLoadError) as info:
        load(path)
    message = str(info.value)
    assert "evil.ckpt" in message and "refused" in message
    if kind != "raw-pickle":
        assert "system" in message  # names what the file asked to run (posix.system / nt.system)
    assert not marker.exists()


# -- bad files: one clear message each ----------------------------------------------------------------------------


def test_truncated_safetensors(sd1_file, tmp_path):
    path = tmp_path / "cut.safetensors"
    data = sd1_file.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors: truncated"):
        load(path)


def test_absurd_header(tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ModelLoadError, match=r"absurd\.safetensors: corrupt safetensors header"):
        load(path)


@pytest.mark.parametrize("header, match", [
    (b"not json at all!", "not JSON"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', "needs 8 bytes"),
    (b'{"a": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}', "unknown dtype"),
    (b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "invalid shape"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
     b' "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}', "overlap"),
])
def test_corrupt_headers(tmp_path, header, match):
    path = tmp_path / "bad.safetensors"
    header = header + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ModelLoadError, match=match) as info:
        load(path)
    assert "bad.safetensors" in str(info.value)


def test_tiny_and_empty_files(tmp_path):
    for data, name in ((b"", "empty.safetensors"), (b"\x00" * 5, "short.safetensors"), (b"garbage", "x.ckpt")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
            load(path)


def test_corrupt_ckpt(sd1, tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ModelLoadError, match=r"cut\.ckpt: not a readable PyTorch checkpoint, truncated or corrupt"):
        load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"cut\.ckpt: not a readable PyTorch checkpoint"):
        load(path)


def test_missing_component(sd1, tmp_path):
    path = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in sd1[1].items() if not k.startswith("first_stage_model.")}, str(path))
    with pytest.raises(ModelLoadError, match="VAE is missing"):
        load(path)


def test_missing_tensor(sd1, tmp_path):
    path = tmp_path / "hole.safetensors"
    missing = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    save_file({k: v for k, v in sd1[1].items() if k != missing}, str(path))
    with pytest.raises(ModelLoadError, match=r"hole\.safetensors: 1 tensor\(s\) missing \(UNet\), e\.g\. " + missing):
        load(path)


def test_wrong_shape(sd1, tmp_path):
    path = tmp_path / "shape.safetensors"
    bad = dict(sd1[1])
    key = "first_stage_model.decoder.mid.attn_1.q.weight"
    bad[key] = torch.zeros(128, 64, 1, 1)
    save_file(bad, str(path))
    with pytest.raises(ModelLoadError, match=rf"shape\.safetensors: tensor {key} has shape \[128, 64, 1, 1\]"):
        load(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="GGUF"):
        load(path)


def test_nothing_half_loaded_stays_in_memory(sd1_file, monkeypatch):
    """A read failing midway: every tensor read before it is freed with the error."""
    read: list[weakref.ref] = []
    original = archives.SafetensorsArchive.get

    def failing_get(self, name):
        if len(read) == 40:
            raise ModelLoadError(f"{self.path.name}: cannot read tensor {name} (simulated I/O error)")
        tensor = original(self, name)
        read.append(weakref.ref(tensor))
        return tensor

    monkeypatch.setattr(archives.SafetensorsArchive, "get", failing_get)
    with pytest.raises(ModelLoadError, match="simulated I/O error"):
        load(sd1_file)
    gc.collect()
    assert len(read) == 40 and all(ref() is None for ref in read)


def test_loading_a_file_neither_imports_dynamo_nor_changes_built_models(tmp_path):
    """The meta-device build skips nn.Embedding's N(0, 1) start (its Python fallback imported torch._dynamo, 2.3 s
    of every load); a model built in code still gets it."""
    import subprocess

    path = tmp_path / "tiny-sd1.safetensors"
    save_file(sd1_state_dict(random_model(sd1_config(), seed=3)), str(path))
    probe = ("import sys, torch; from studio.engine.loading import load_model; "
             f"m = load_model({str(path)!r}, torch.device('cpu'), torch.float32); "
             "print(m.cond_stage_model.transformer.text_model.embeddings.token_embedding.weight.abs().sum().item() > 0, "
             "'torch._dynamo' in sys.modules)")
    env = dict(os.environ, STUDIO_NO_PACK_CACHE="1")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.split() == ["True", "False"]

    from studio.engine.text_encoder import CLIPTextEmbeddings

    config = sd1_config().text
    torch.manual_seed(0)
    built = CLIPTextEmbeddings(config)
    torch.manual_seed(0)
    token, position = torch.nn.Embedding(*built.token_embedding.weight.shape), torch.nn.Embedding(
        *built.position_embedding.weight.shape)
    assert torch.equal(built.token_embedding.weight, token.weight)  # the same draws as nn.Embedding's own
    assert torch.equal(built.position_embedding.weight, position.weight)
    assert built.token_embedding.weight.std().item() == pytest.approx(1.0, abs=0.05)
