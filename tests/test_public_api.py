import monorec


def test_public_api_is_curated():
    """Changing the public API is a decision: update this list on purpose."""
    assert sorted(monorec.__all__) == [
        "ArtifactError",
        "Change",
        "ChangeError",
        "ConfigError",
        "ContextSchema",
        "DataError",
        "DeployError",
        "Deployment",
        "EntityFilter",
        "Featurizer",
        "GateError",
        "GateResult",
        "ModelBundle",
        "MonorecError",
        "MonorecModel",
        "PreparedData",
        "ProjectConfig",
        "Registry",
        "RegistryError",
        "RequestError",
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


def test_every_error_is_a_monorec_error():
    from monorec import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), monorec.MonorecError)
        assert name in monorec.__all__  # every error is part of the public API
