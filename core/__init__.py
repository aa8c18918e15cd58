"""The torch-free contract shared by the API and the worker."""
