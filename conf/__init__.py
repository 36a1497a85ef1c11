"""The Hydra configs of run.py and the `pfa` command, installed as the package `pfa_lightning.conf`."""
