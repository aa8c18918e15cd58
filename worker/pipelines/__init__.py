"""Model residency and model-family code: the engine that keeps text encoder, UNet and VAE
resident, SD/SDXL/refiner and ControlNet pipelines, LoRA adapters, textual-inversion embeddings,
schedulers, prompt encoding and its cache, attention backends and device selection."""
