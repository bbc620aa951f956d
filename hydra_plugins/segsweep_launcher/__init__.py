"""Hydra accepts launchers only from classes defined inside the `hydra_plugins` namespace package:
this registers seg.launcher.SafeJoblibLauncher (the joblib launcher that survives signals and dead
workers; all of its code lives there). conf/launcher/joblib.yaml selects it by this name."""
from seg import launcher as _launcher


class SafeJoblibLauncher(_launcher.SafeJoblibLauncher):
    """seg.launcher.SafeJoblibLauncher under the name Hydra's plugin registry requires."""
