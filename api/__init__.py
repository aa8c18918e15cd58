"""The stateless HTTP API. Never imports torch, diffusers or worker/."""
