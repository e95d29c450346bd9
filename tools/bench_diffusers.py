"""Images/s of a plain diffusers StableDiffusionPipeline, the yardstick for the branch sampler.

    python tools/bench_diffusers.py MODEL_DIR NUM_IMAGES [BATCH]
"""

import sys
import time

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

model, num_images = sys.argv[1], int(sys.argv[2])
batch = int(sys.argv[3]) if len(sys.argv) > 3 else num_images
pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float16, safety_checker=None).to("cuda")
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
run = lambda: pipe(["a red apple"] * batch, num_inference_steps=20, guidance_scale=5.0, eta=1.0, output_type="np")
run()  # warm-up
torch.cuda.synchronize()
started = time.time()
for _ in range(num_images // batch):
    run()
torch.cuda.synchronize()
seconds = time.time() - started
print(f"diffusers_pipeline: {num_images} images in {seconds:.2f}s, {num_images / seconds:.2f} images/s, "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
