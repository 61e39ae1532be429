"""Two JAX processes on localhost (jax.distributed, gloo CPU collectives), 2 fake devices each:
the same state, metrics and predictions as one process on one device.

The processes run tests/test_sharding.py's worker: each feeds only its own half of the tasks
(`input_pipeline.shard_batch`, as the per-process input pipeline does) into the 4-device mesh.
The test picks a free port, starts both, bounds their time, and kills what is left.
"""

import importlib.util
import pathlib

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "sharding_worker", pathlib.Path(__file__).with_name("test_sharding.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def test_distributed_two_processes_match_one_device(tmp_path, tmp_path_factory):
  cache = worker.compile_cache(tmp_path_factory)
  port = worker.free_port()
  procs = [worker.start_worker(tmp_path, f"process{i}", devices=2, processes=2, process_id=i,
                               port=port, cache=cache) for i in range(2)]
  procs.append(worker.start_worker(tmp_path, "one", devices=1, cache=cache))
  two, _, one = worker.wait_workers(procs)  # process 1 writes nothing: reads process 0's
  assert str(two["shardings/lstm_h"]) == "P(None, 'data')"
  worker.assert_same_run(two, one)
  assert not np.allclose(two["metrics/loss"][0], two["metrics/loss"][-1])
