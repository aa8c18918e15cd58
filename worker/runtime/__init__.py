"""The worker's runtime: the RQ loop and batching runner, batch execution, the background upload
stage, liveness and the health/metrics server, progress publishing and output encoding. It talks
to the model only through :class:`worker.pipelines.engine.Engine`."""
