"""The distributed paths, on Ray (``pip install 'monorec[ray]'``): the same work as the in-process paths,
spread over a local or remote Ray cluster. Importing this package does not import Ray; each path does when
it runs (and says which extra to install when Ray is missing).

- :class:`RayBulkEmbedder`: a new version's bulk pass (catalogue -> item tower, users -> context tower)
  on Ray Data
  (``monorec deploy --ray auto|ADDRESS``).
- :class:`RayTableScorer`: an environment's precomputed tables (top-K per key) scored on Ray Data
  (``monorec precompute --ray auto|ADDRESS``).
- :func:`train_on_ray`: the training loop on Ray Train workers, data-parallel
  (``monorec train --ray auto|ADDRESS --workers N``).
- :func:`ray_session`: joins or starts the cluster.
"""

from monorec.distributed.batch_scoring import RayTableScorer
from monorec.distributed.bulk_embed import RayBulkEmbedder
from monorec.distributed.session import RAY_INSTALL, import_ray, ray_session
from monorec.distributed.train_on_ray import train_on_ray

__all__ = ["RAY_INSTALL", "RayBulkEmbedder", "RayTableScorer", "import_ray", "ray_session", "train_on_ray"]
