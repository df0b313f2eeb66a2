"""DDIM inversion quality on the shipped model: invert scenes (η = 0, guidance 1, their own caption), regenerate
from the found x_T with DDIM η = 0, and report PSNR against the VAE round trip (the best any latent method can do).

    python benchmarks/bench_inversion.py --scenes 16 --steps 50 --refine 0,1,2,4

--refine lists the fixed-point iterations per step to compare (samplers.ddim_inversion; 0 = plain DDIM inversion).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.engine.images import image_to_tensor, tensor_to_image  # noqa: E402
from studio.training.scenes import make_batch  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--refine", default="0,1,2", help="comma-separated fixed-point iteration counts")
    args = parser.parse_args()
    torch.set_num_threads(2)

    engine = Engine()
    model = engine.model(args.model, "cpu", "fp32")
    images, captions, _ = make_batch(args.seed, args.scenes, held_out=True)
    round_trips = [tensor_to_image(model.decode_latent(model.encode_image(image_to_tensor(image)))) for image in images]
    ceiling = np.mean([psnr(round_trip, image) for round_trip, image in zip(round_trips, images)])
    print(f"model {args.model}: {args.scenes} held-out scenes, {args.steps} DDIM steps each way, guidance 1")
    print(f"PSNR VAE round trip vs input image (ceiling): mean {ceiling:.2f} dB")
    for refine in (int(v) for v in args.refine.split(",")):
        vs_round_trip, vs_input = [], []
        began = time.perf_counter()
        for image, caption, round_trip in zip(images, captions, round_trips):
            request = GenerationRequest(prompt=caption, model=args.model, steps=args.steps, cfg=1.0, device="cpu",
                                        dtype="fp32", init_image=image)
            run = [e for e in engine.invert(request, refine=refine)][-1].run
            vs_round_trip.append(psnr(run.image, round_trip))
            vs_input.append(psnr(run.image, image))
        seconds = (time.perf_counter() - began) / len(images)
        print(f"refine {refine}: regeneration vs VAE round trip mean {np.mean(vs_round_trip):.2f} dB, "
              f"worst {np.min(vs_round_trip):.2f} dB; vs input mean {np.mean(vs_input):.2f} dB; {seconds:.2f} s/scene")

if __name__ == "__main__":
    main()
