"""`hparams=optuna`: segsweep's Optuna sweeper (hydra_plugins/segsweep_optuna/optuna_sweeper.py).

Hydra instantiates sweepers only from classes inside the `hydra_plugins` namespace package; the
module registers `hydra/sweeper: segsweep_optuna` in Hydra's ConfigStore when Hydra scans it.
"""
