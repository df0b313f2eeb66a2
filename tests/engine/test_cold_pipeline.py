"""Cold runs through the Engine: the same Run, timeline and branches as latent diffusion, with tiny random
restoration nets built here."""

import numpy as np
import pytest
import torch

from studio.engine import GenerationRequest, RequestError
from studio.engine.cold import Degradation, mask_order
from studio.engine.cold_model import ColdConfig, RestorationNet, load_cold_file, save_cold_file
from studio.engine.pipeline import Engine

WORDS = ("blue", "circle", "red", "square")


def tiny_model(tmp_path, kind="blur", steps=6, seed=0):
    torch.manual_seed(seed)
    config = ColdConfig(kind=kind, steps=steps if kind != "down" else 12, channels=(8, 16), vocabulary=len(WORDS) + 1,
                        gmm_weights=(0.5, 0.5), gmm_means=((0.5, -0.5, 0.0), (-0.2, 0.1, 0.8)),
                        gmm_stds=((0.05, 0.05, 0.05), (0.1, 0.1, 0.1)))
    net = RestorationNet(config)
    with torch.no_grad():  # a visible, wrong restorer (random weights near zero would leave x_s as it is)
        net.out.weight.mul_(50)
    path = tmp_path / f"tiny-{kind}.safetensors"
    save_cold_file(net, WORDS, path, dtype=torch.float32)
    return str(path)


def picture(seed=1):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_model_file_round_trip(tmp_path):
    path = tiny_model(tmp_path)
    net, words = load_cold_file(path)
    assert words == WORDS and net.config.kind == "blur" and net.config.gmm_weights == (0.5, 0.5)
    x = torch.zeros(1, 3, 64, 64)
    assert net(x, torch.tensor([3])).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("sampler", ["cold_improved", "cold_naive"])
def test_generation_records_x_s_x0_and_the_correction(tmp_path, sampler):
    path = tiny_model(tmp_path)
    run = Engine().run(GenerationRequest(model=path, sampler=sampler, steps=6, seed=3, prompt="a red circle"))
    assert run.status == "finished" and run.image.shape == (64, 64, 3) and run.kind == "txt2img"
    assert [lv.timestep for lv in run.grid] == [6, 5, 4, 3, 2, 1, 0]
    assert [round(lv.sigma, 6) for lv in run.grid] == [round(s / 6, 6) for s in (6, 5, 4, 3, 2, 1, 0)]
    first = run.timeline[0].x_t
    assert (first - first.mean(dim=(2, 3), keepdim=True)).abs().max() < 0.02  # GMM colour + 0.002·noise
    d = Degradation("blur", 6)
    for i in range(5):
        step = run.timeline[i]
        x0 = step.view("x0")
        correction = d(x0, 6 - i) - d(x0, 5 - i)
        torch.testing.assert_close(step.eps.float(), correction, atol=2e-3, rtol=1e-3)  # ε̂ slot, float16
        expected = step.x_t - correction if sampler == "cold_improved" else d(x0, 5 - i)
        torch.testing.assert_close(run.timeline[i + 1].x_t, expected, atol=1e-5, rtol=0)
    assert run.step_image(2, "x0").shape == (64, 64, 3)


def test_noise_scale_and_seed(tmp_path):
    path = tiny_model(tmp_path)
    engine = Engine()
    a = engine.run(GenerationRequest(model=path, sampler="cold_improved", steps=3, seed=5, cold_noise=0.0))
    b = engine.run(GenerationRequest(model=path, sampler="cold_improved", steps=3, seed=5, cold_noise=0.0))
    c = engine.run(GenerationRequest(model=path, sampler="cold_improved", steps=3, seed=5, cold_noise=0.05))
    assert np.array_equal(a.image, b.image)
    flat = a.timeline[0].x_t
    assert torch.equal(flat, flat[..., :1, :1].expand_as(flat))  # no noise: one colour per channel
    assert not torch.equal(c.timeline[0].x_t, flat)


@pytest.mark.parametrize("switch", ["cold_improved", "cold_naive"])
def test_branch_from_step_k_replays_bit_for_bit_and_can_switch_algorithm(tmp_path, switch):
    path = tiny_model(tmp_path)
    engine = Engine()
    request = GenerationRequest(model=path, sampler="cold_improved", steps=6, seed=2)
    parent = engine.run(request)
    k = 3
    branch = engine.run(request.replace(sampler=switch), parent=parent, from_step=k)
    assert branch.from_step == k and len(branch.timeline) == 6
    for i in range(k + 1):
        assert torch.equal(branch.timeline[i].x_t, parent.timeline[i].x_t)
    if switch == "cold_improved":
        assert all(torch.equal(branch.timeline[i].x_t, parent.timeline[i].x_t) for i in range(6))
        assert np.array_equal(branch.image, parent.image)
    else:
        other = engine.run(request.replace(sampler="cold_naive"))  # Alg. 1 from the start differs from the branch
        assert not np.array_equal(branch.image, parent.image) and not np.array_equal(branch.image, other.image)


def test_branch_with_fewer_steps_keeps_the_parents_levels_above_k(tmp_path):
    path = tiny_model(tmp_path)
    engine = Engine()
    parent = engine.run(GenerationRequest(model=path, sampler="cold_improved", steps=6, seed=2))
    branch = engine.run(GenerationRequest(model=path, sampler="cold_naive", steps=2, seed=2), parent=parent,
                        from_step=2)
    assert [lv.timestep for lv in branch.grid] == [6, 5, 4, 2, 0]


def test_restoration_starts_from_the_picture_degraded_to_strength(tmp_path):
    path = tiny_model(tmp_path, steps=10)
    image = picture()
    run = Engine().run(GenerationRequest(model=path, sampler="cold_improved", steps=10, init_image=image,
                                         strength=0.5))
    assert run.kind == "img2img" and run.grid[0].timestep == 5 and run.steps == 5
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    torch.testing.assert_close(run.timeline[0].x_t, Degradation("blur", 10)(x, 5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["cold_improved", "cold_naive"])
def test_cold_inpainting_keeps_every_unmasked_pixel(tmp_path, sampler):
    path = tiny_model(tmp_path, kind="mask", steps=8)
    image = picture(4)
    mask = np.zeros((64, 64), np.float32)
    mask[10:40, 20:50] = 1
    run = Engine().run(GenerationRequest(model=path, sampler=sampler, steps=8, init_image=image, mask=mask,
                                         prompt="a blue square"))
    assert run.kind == "inpaint" and run.grid[0].timestep == 8
    keep = mask < 0.5
    assert np.array_equal(run.image[keep], image[keep])
    assert not np.array_equal(run.image[~keep], image[~keep])
    region = torch.from_numpy(mask)[None, None]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.equal(run.timeline[0].x_t, Degradation("mask", 8)(x, 8, mask_order(region)))


def test_mask_model_generates_from_the_fully_masked_picture(tmp_path):
    path = tiny_model(tmp_path, kind="mask", steps=8)
    run = Engine().run(GenerationRequest(model=path, sampler="cold_improved", steps=4, cold_noise=0.0))
    assert torch.equal(run.timeline[0].x_t, torch.zeros(1, 3, 64, 64)) and run.steps == 4


def test_user_errors(tmp_path):
    blur = tiny_model(tmp_path)
    engine = Engine()
    with pytest.raises(RequestError, match="is a cold model: choose the sampler cold_improved or cold_naive"):
        engine.run(GenerationRequest(model=blur, sampler="ddim"))
    with pytest.raises(RequestError, match="needs a cold model"):
        engine.run(GenerationRequest(model="tiny-random", sampler="cold_naive"))
    with pytest.raises(RequestError, match="cannot inpaint: use cold-mask"):
        engine.run(GenerationRequest(model=blur, sampler="cold_naive", init_image=picture(),
                                     mask=np.ones((64, 64), np.float32)))
    with pytest.raises(RequestError, match="restores 64x64 pictures; the input is 32x32"):
        engine.run(GenerationRequest(model=blur, sampler="cold_naive", init_image=picture()[:32, :32]))
    with pytest.raises(RequestError, match="noise must be between 0 and 1"):
        engine.run(GenerationRequest(model=blur, sampler="cold_naive", cold_noise=-1.0))


def test_the_backend_probes_a_cold_model_and_decodes_its_steps(tmp_path):
    import threading

    from studio.engine import LocalBackend, ModelProbed, ProbeModel
    from studio.engine.cold_pipeline import cold_model_info

    path = tiny_model(tmp_path)
    info = cold_model_info(path)
    assert (info.family, info.samplers, info.default_size) == ("cold", ("cold_improved", "cold_naive"), 64)
    backend = LocalBackend()
    messages = list(backend.execute(ProbeModel(job_id=1, spec=path), threading.Event()))
    assert isinstance(messages[-1], ModelProbed) and messages[-1].info.family == "cold"
    engine = Engine()
    run = engine.run(GenerationRequest(model=path, sampler="cold_improved", steps=3))
    assert engine.decode_step(run, 1, "x0").shape == (64, 64, 3)


def test_guidance_on_x0_is_eq_6_and_scale_one_is_the_plain_call():
    from studio.engine.cold_model import caption_tokens, guided_x0, null_tokens

    torch.manual_seed(0)
    net = RestorationNet(ColdConfig(kind="mask", steps=4, channels=(8, 16), vocabulary=len(WORDS) + 1)).eval()
    with torch.no_grad():
        net.words.weight.mul_(20)  # a caption that moves x̂0 visibly
    x, s, extra = torch.randn(3, 3, 64, 64) * 0.3, torch.tensor([2, 3, 4]), torch.rand(3, 1, 64, 64)
    ids, offsets = caption_tokens(["a red circle", "blue", "nothing known"], WORDS)
    with torch.no_grad():
        conditional, unconditional = net(x, s, extra, ids, offsets), net(x, s, extra, *null_tokens(3))
        assert not torch.allclose(conditional, unconditional)
        assert torch.equal(guided_x0(net, x, s, extra, ids, offsets, 1.0), conditional)
        for w in (0.0, 3.0):  # Ho & Salimans 2022 eq. 6 on x̂0, clipped to the pixel range
            expected = (unconditional + w * (conditional - unconditional)).clamp(-1, 1)
            torch.testing.assert_close(guided_x0(net, x, s, extra, ids, offsets, w), expected, atol=1e-5, rtol=0)
        # one s for the batch reads as that s for every image; an unconditional call ignores the scale
        torch.testing.assert_close(guided_x0(net, x, torch.tensor(3), extra, ids, offsets, 3.0),
                                   guided_x0(net, x, torch.tensor([3, 3, 3]), extra, ids, offsets, 3.0))
        assert torch.equal(guided_x0(net, x, s, extra, None, None, 3.0), net(x, s, extra))


def test_the_cfg_scale_guides_a_model_trained_with_caption_dropout_and_is_its_default(tmp_path):
    from studio.engine.cold_pipeline import cold_model_info

    before = tiny_model(tmp_path, kind="mask", steps=6)  # no caption dropout: R(x_s, s, ∅) was never learned
    net, words = load_cold_file(before)
    dropout = tmp_path / "dropout.safetensors"
    config = ColdConfig.from_json({**net.config.to_json(), "caption_dropout": 0.12, "guidance": 2.5})
    guided_net = RestorationNet(config)
    guided_net.load_state_dict(net.state_dict())
    save_cold_file(guided_net, words, dropout, dtype=torch.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[10:40, 20:50] = 1
    request = GenerationRequest(sampler="cold_improved", steps=6, init_image=picture(2), mask=mask,
                                prompt="a blue square", cfg=1.0)
    engine = Engine()
    plain, guided = engine.run(request.replace(model=str(dropout))), engine.run(request.replace(model=str(dropout), cfg=4.0))
    keep = mask < 0.5
    assert np.array_equal(guided.image[keep], picture(2)[keep])  # guidance changes only the hole
    assert not np.array_equal(plain.image, guided.image)
    assert np.array_equal(engine.run(request.replace(model=before)).image,
                          engine.run(request.replace(model=before, cfg=4.0)).image)
    assert cold_model_info(before).default_cfg == 1.0 and cold_model_info(str(dropout)).default_cfg == 2.5


def test_an_unconditional_cold_model_ignores_the_cfg_scale(tmp_path):
    net, _ = load_cold_file(tiny_model(tmp_path))
    path = tmp_path / "no-caption.safetensors"
    unconditional = RestorationNet(ColdConfig.from_json({**net.config.to_json(), "vocabulary": 0}))
    save_cold_file(unconditional, (), path, dtype=torch.float32)
    request = GenerationRequest(model=str(path), sampler="cold_naive", steps=4, seed=5, cfg=1.0)
    engine = Engine()
    assert np.array_equal(engine.run(request).image, engine.run(request.replace(cfg=7.5)).image)
