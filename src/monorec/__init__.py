"""monorec: one offline pipeline, one multi-task model and one API for every search and recommendation
canvas (home, related, search, browse).

The curated public API; everything else is an implementation detail that may change.
"""

from monorec.bundle import ModelBundle
from monorec.config import ProjectConfig, check_config, load_config, parse_config
from monorec.data.features import Featurizer
from monorec.data.movielens import read_movielens
from monorec.data.prepared import PreparedData, prepare
from monorec.data.tables import load_dataset
from monorec.data.world import WorldSpec, generate_world
from monorec.deployment import Deployment
from monorec.environments import CanvasRules, EnvironmentSpec
from monorec.errors import (
    ArtifactError,
    CanvasNotServed,
    ChangeError,
    ConfigError,
    DataError,
    DeployError,
    GateError,
    MonorecError,
    RegistryError,
    RequestError,
    ServingUnavailable,
    StreamUnavailable,
)
from monorec.evaluation.evaluate import evaluate_bundle
from monorec.evaluation.gate import GateResult, compare_reports
from monorec.index import EntityFilter
from monorec.models.model import MonorecModel
from monorec.registry import Registry
from monorec.schema import ContextSchema
from monorec.serving import Candidates, RecommendRequest, RecommendResponse, ServingEngine
from monorec.stream.changes import Change
from monorec.train import train

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "Candidates",
    "CanvasNotServed",
    "CanvasRules",
    "Change",
    "ChangeError",
    "ConfigError",
    "ContextSchema",
    "DataError",
    "DeployError",
    "Deployment",
    "EntityFilter",
    "EnvironmentSpec",
    "Featurizer",
    "GateError",
    "GateResult",
    "ModelBundle",
    "MonorecError",
    "MonorecModel",
    "PreparedData",
    "ProjectConfig",
    "RecommendRequest",
    "RecommendResponse",
    "Registry",
    "RegistryError",
    "RequestError",
    "ServingEngine",
    "ServingUnavailable",
    "StreamUnavailable",
    "WorldSpec",
    "check_config",
    "compare_reports",
    "evaluate_bundle",
    "generate_world",
    "load_config",
    "load_dataset",
    "parse_config",
    "prepare",
    "read_movielens",
    "train",
]
