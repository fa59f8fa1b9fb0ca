import dataclasses

import pytest
import torch

from monorec.train import train
from monorec.weight_average import WeightAverage


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    return model


def _step(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_the_average_is_the_mean_of_the_steps_until_the_horizon_then_exponential():
    model = _model()
    average = WeightAverage(model, horizon_steps=4)
    for value in (1.0, 2.0, 3.0):  # before the horizon: the plain mean, the initial weights forgotten
        _step(model, value)
        average.update()
    weight = average.state_dict()["0.weight"]
    torch.testing.assert_close(weight, torch.full_like(weight, 2.0))
    for value in (4.0, 10.0):  # 4th update: the mean of four; 5th: a quarter of the way to 10
        _step(model, value)
        average.update()
    torch.testing.assert_close(average.state_dict()["0.weight"], torch.full_like(weight, 2.5 + (10.0 - 2.5) / 4))
    # integer buffers (BatchNorm's step count) are the model's own, never averaged
    assert average.state_dict()["1.num_batches_tracked"].dtype == torch.long
    assert "1.num_batches_tracked" not in average.names


def test_applied_lends_the_average_to_the_model_and_gives_its_weights_back():
    model = _model()
    average = WeightAverage(model, horizon_steps=10)
    _step(model, 1.0)
    average.update()
    _step(model, 3.0)
    average.update()  # the average is 2.0, the model 3.0
    x = torch.ones(4, 3)
    model.eval()
    with average.applied():
        assert torch.all(model[0].weight == 2.0)
        inside = model(x)
    assert torch.all(model[0].weight == 3.0)
    assert not torch.equal(inside, model(x))


def test_a_checkpoint_of_the_average_continues_it():
    model = _model()
    average = WeightAverage(model, horizon_steps=3)
    for value in (1.0, 5.0):
        _step(model, value)
        average.update()
    saved = average.checkpoint()
    resumed = WeightAverage(model, horizon_steps=3)
    resumed.restore(saved)
    for a in (average, resumed):
        _step(model, 9.0)
        a.update()
    for k, v in average.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)


def test_the_horizon_must_be_at_least_one_step():
    with pytest.raises(ValueError, match="horizon_steps"):
        WeightAverage(_model(), horizon_steps=0.5)


def test_training_keeps_and_validates_the_averaged_weights(tmp_path, config, prepared):
    """The kept model is the average of its epoch's steps, not the last step's weights, and a resumed run
    ends where a straight one does."""
    spec = dataclasses.replace(config.train, epochs=2, patience=5, weight_average_epochs=0.5)
    averaged = dataclasses.replace(config, train=spec)
    plain = dataclasses.replace(config, train=dataclasses.replace(spec, weight_average_epochs=0.0))
    a = train(averaged, prepared, checkpoint_dir=tmp_path / "a", progress=False)
    b = train(plain, prepared, checkpoint_dir=tmp_path / "b", progress=False)
    # the same steps (training never reads the average), but the kept weights differ
    assert [h["loss"] for h in a.meta["history"]] == [h["loss"] for h in b.meta["history"]]
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["stepper"]["model"]
    kept = a.model.state_dict()
    assert not torch.equal(kept["tables.tables.entity.weight"], last["tables.tables.entity.weight"])
    one = dataclasses.replace(averaged, train=dataclasses.replace(spec, epochs=1))
    train(one, prepared, checkpoint_dir=tmp_path / "r", progress=False)
    resumed = train(averaged, prepared, checkpoint_dir=tmp_path / "r", progress=False)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)


def test_a_negative_horizon_is_a_config_error(config):
    from monorec.config import parse_config
    from monorec.errors import ConfigError

    raw = config.to_dict()
    raw["train"]["weight_average_epochs"] = -1.0
    with pytest.raises(ConfigError, match=r"train\.weight_average_epochs"):
        parse_config(raw)
