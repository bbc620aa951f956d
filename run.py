"""segsweep entry point: compose a run from conf/ and train it. See README.md.

    python run.py                                           # one run on the embedded phantom data
    python run.py -m model=unet,resunet,transunet loss=bce,focal,dice

A single run that fails prints one line (`error: ...`) and exits 1; the run is recorded FAILED in
MLflow with its traceback as an artifact. SEGSWEEP_DEBUG=1 prints the traceback here too. A bad
config value (seg.schema) fails before anything is created. In a sweep a failed job is counted by
the sweep summary and the sweep goes on.
"""
import os
import sys

import hydra
from omegaconf import DictConfig

import seg.config  # noqa: F401  (registers the project_root resolver used by conf/config.yaml)
from seg.data.renamed import refused


def _one_line(exc: BaseException) -> str:
    from seg.schema import ConfigError

    text = " ".join(str(exc).split())
    if isinstance(exc, ConfigError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from seg.train import Interrupted, run  # imported here so `--help` and config errors stay fast

    try:
        return run(cfg)
    except Interrupted as exc:
        print(f"error: interrupted ({exc}): the run is recorded KILLED; run the same command again to resume",
              file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C): the run is recorded KILLED; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SEGSWEEP_DEBUG"):
            raise
        print(f"error: {_one_line(exc)}  (SEGSWEEP_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    renamed = refused(sys.argv[1:])     # dataset=phantom_xray & co.: one line naming the new config
    if renamed:
        sys.exit(f"error: {renamed}")
    main()
