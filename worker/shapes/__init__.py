"""The built-in shapes world: a deterministic scene generator with captions, and a scorer that
reads a generated image back (colours, shape, position), for training and testing a small model
that draws what the prompt says."""
