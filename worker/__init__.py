"""The GPU side: resident model, batching runner, RQ integration."""
