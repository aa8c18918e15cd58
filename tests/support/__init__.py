"""Helpers the test suites share: real components started privately per run."""
