"""One measured run, in a process of its own: ``changemap run`` with the benchmark's choices passed in.

    python -m benchmarks.run_scene [--null] [--simulate-node CPUS:GPUS] [--timeline PATH] -- BEFORE AFTER -o OUT [run options]

``--null`` runs the null model (:mod:`benchmarks.nullmodel`) in actors of its own class;
``--simulate-node`` starts the local runtime claiming that many CPUs and GPUs and runs the
GPU-placed actors on the CPU; ``--timeline`` writes Ray's task timeline after the run (the
stages' busy seconds). The run's JSON summary is printed as the CLI's ``--json`` does.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str]) -> int:
    """Parse the benchmark's flags, then run the pair as the CLI would; print its summary."""
    bench = argparse.ArgumentParser(prog="python -m benchmarks.run_scene")
    bench.add_argument("--null", action="store_true")
    bench.add_argument("--simulate-node", default=None, metavar="CPUS:GPUS")
    bench.add_argument("--timeline", default=None)
    split = argv.index("--") if "--" in argv else len(argv)
    flags = bench.parse_args(argv[:split])

    # isort: off
    import pipeline  # noqa: F401  (first: it keeps a local Ray on 127.0.0.1, which must be set before ray is imported)
    import ray
    # isort: on
    from benchmarks import nullmodel
    from benchmarks.common import parse_node
    from pipeline.cli import _parser, options
    from pipeline.cli.run import run_pair
    from pipeline.config import MapSpec, RunOptions
    from pipeline.engine.stream import object_store_for
    from pipeline.session import Session, start_ray

    args = _parser().parse_args(["run", *argv[split + 1:]])
    spec, run = options.take(args, MapSpec), options.take(args, RunOptions)
    if flags.null:
        nullmodel.register()
    cpus, gpus = parse_node(flags.simulate_node) if flags.simulate_node else (None, None)
    with Session(run, predictor=nullmodel.NullPredictor if flags.null else None,
                 device="cpu" if flags.simulate_node else None) as session:
        # Ray is started here, not by the session, so that its timeline can be read after the run.
        started = start_ray(run.ray_address, num_cpus=cpus, num_gpus=gpus,
                            object_store_memory=object_store_for(session.plan(spec, run)))
        summary = run_pair(spec, run, session=session)
    if flags.timeline:
        time.sleep(1.5)  # workers report their task events once a second: a short run's last calls would be missing
        ray.timeline(filename=flags.timeline)
    if started:
        ray.shutdown()
    print(summary.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
