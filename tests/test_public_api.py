import monorec


def test_public_api_is_curated():
    """Changing the public API is a decision: update this list on purpose."""
    assert sorted(monorec.__all__) == [
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
    for name in monorec.__all__:
        assert getattr(monorec, name) is not None


def test_importing_monorec_does_not_import_the_web_stack():
    """Training users pay nothing for the HTTP layer: ``monorec.serving.app`` is imported on its own."""
    import subprocess
    import sys

    code = "import sys, monorec; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_error_is_a_monorec_error():
    from monorec import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), monorec.MonorecError)
        assert name in monorec.__all__  # every error is part of the public API
