"""The deployment side of the embedding server: the versions a folder holds and how they move (DESIGN
section 6). Data flows top to bottom:

- :mod:`~monorec.deployment.control_plane`: each version's persisted state, the serving pointers, trials;
- :mod:`~monorec.deployment.lifecycle`: :class:`Deployment`, the lifecycle (stage, validate, switch,
  rollback, retire) driven by that state, one owner process per folder (:mod:`~.ownership`);
- :mod:`~monorec.deployment.staging` and :mod:`~monorec.deployment.checks`: filling a new version's stores
  and what it must show before it serves;
- :mod:`~monorec.deployment.sinks`: where the change log's loaders write (the catalogue, each version);
- :mod:`~monorec.deployment.version` and :mod:`~monorec.deployment.router`: a version in memory and the
  router that pins each request to one; :mod:`~monorec.deployment.trials`: canary and shadow trials.

Serving (:mod:`monorec.serving`) reads from here; nothing here imports serving.
"""

from monorec.deployment.lifecycle import Deployment
from monorec.deployment.router import VersionRouter
from monorec.deployment.version import ServingVersion
from monorec.stream.publish import open_log, publish_changes

__all__ = ["Deployment", "ServingVersion", "VersionRouter", "open_log", "publish_changes"]
