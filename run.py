"""segsweep entry point: compose a run from conf/ and train it. See README.md.

    python run.py                                           # one run on the embedded phantom data
    python run.py -m model=unet,resunet,transunet loss=bce,focal,dice
"""
import sys

import hydra
from omegaconf import DictConfig

import seg.config  # noqa: F401  (registers the project_root resolver used by conf/config.yaml)
from seg.data.renamed import refused


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from seg.train import run  # imported here so `--help` and config errors stay fast

    return run(cfg)


if __name__ == "__main__":
    renamed = refused(sys.argv[1:])     # dataset=phantom_xray & co.: one line naming the new config
    if renamed:
        sys.exit(f"error: {renamed}")
    main()
