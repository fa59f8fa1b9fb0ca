"""Canary and shadow trials (issue 12, must-have 6): a ready version beside the serving one, each request
still pinned to ONE version; sticky canary shares; shadow comparisons off the request path; promote,
abort, an automatic abort when the candidate breaches the environment's thresholds; the admin API and the
command line; a restart resumes the trial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from live_server import live_server
from monorec.cli import main
from monorec.deployment import Deployment
from monorec.deployment.trials import Trial
from monorec.errors import DeployError
from monorec.registry import Registry
from monorec.serving.app import ServeSettings, create_app
from monorec.serving.messages import RecommendRequest
from monorec.serving.trial_stats import TrialStats, overlap_at_k, rank_agreement
from serving_fixtures import engine_for
from waiting import wait_for

TOKEN = "trial-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def two_live(tmp_path: Path, two_versions: Registry, prepared) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    """v0001 serving, v0002 staged and validated (ready) beside it."""
    dep = Deployment(tmp_path / "dep", two_versions)
    dep.seed_catalogue(prepared.catalogue)
    dep.deploy("v0001")
    dep.open()
    dep.stage("v0002")
    assert dep.control.get("v0002").state == "ready"  # type: ignore[union-attr]
    try:
        yield dep
    finally:
        dep.close()


def home(user: str) -> RecommendRequest:
    return RecommendRequest(canvas="home", context={"user_id": user}, k=5)


def test_a_canary_share_is_sticky_per_user_and_close_to_its_share() -> None:
    trial = Trial("v0002", "canary", share=0.2)
    taken = [trial.takes({"user_id": f"u{i}"}) for i in range(10_000)]
    assert abs(sum(taken) / len(taken) - 0.2) < 0.02
    assert taken == [trial.takes({"user_id": f"u{i}", "country": "DE"}) for i in range(10_000)]  # sticky
    assert not Trial("v0002", "shadow").takes({"user_id": "u1"})  # shadow never answers
    assert all(Trial("v0002", "canary", share=1.0).takes({"query": f"q{i}"}) for i in range(100))  # no user: hashed


def test_the_comparison_measures() -> None:
    assert overlap_at_k(["a", "b", "c"], ["c", "x", "a"], 3) == pytest.approx(2 / 3)
    assert rank_agreement(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rank_agreement(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert rank_agreement(["a", "b"], ["x", "a"]) is None  # fewer than two in common
    stats = TrialStats()
    for i in range(60):
        stats.observe("v2", "home", 5.0, error=i < 3)
    assert stats.breach("v2", max_error_rate=0.1, max_p99_ms=100, min_requests=50) is None
    assert "failed" in (stats.breach("v2", max_error_rate=0.04, max_p99_ms=100, min_requests=50) or "")
    assert "p99" in (stats.breach("v2", max_error_rate=0.1, max_p99_ms=4, min_requests=50) or "")
    assert stats.breach("v2", max_error_rate=0.0, max_p99_ms=1, min_requests=61) is None  # too few yet


def test_a_canary_pins_each_request_to_one_version_then_promotes(two_live: Deployment) -> None:
    dep = two_live
    with pytest.raises(DeployError, match="serving"):
        dep.trials.start("v0001")
    trial = dep.trials.start("v0002", "canary", share=0.3)
    with pytest.raises(DeployError, match="already"):
        dep.trials.start("v0002", "shadow")
    with pytest.raises(DeployError, match="trial"):
        dep.retire("v0002")
    users = [f"u{i:05d}" for i in range(60)]
    with engine_for(dep, max_batch=8, latency_budget_ms=10_000) as engine:
        answers = engine.recommend_many([home(u) for u in users])
        for user, answer in zip(users, answers, strict=True):  # the version the hash chose, every time
            assert answer.version == ("v0002" if trial.takes({"user_id": user}) else "v0001"), user
            assert answer.source == "model", answer.fallback
        assert {a.version for a in answers} == {"v0001", "v0002"}
        again = engine.recommend_many([home(u) for u in users])
        assert [a.version for a in again] == [a.version for a in answers]
        summary = engine.trials.summary()["canvases"]["home"]["versions"]
        assert summary["v0001"]["requests"] + summary["v0002"]["requests"] == 120
        assert dep.trials.promote() == "v0002"
        assert dep.router.trial is None and dep.control.pointer("serving") == "v0002"
        assert {a.version for a in engine.recommend_many([home(u) for u in users])} == {"v0002"}
    assert dep.control.get("v0001").state == "standby"  # type: ignore[union-attr]


def test_a_shadow_compares_off_the_request_path_and_a_failing_candidate_is_aborted(two_live: Deployment) -> None:
    dep = two_live
    dep.trials.start("v0002", "shadow")
    with engine_for(dep, trial_min_requests=20, latency_budget_ms=10_000) as engine:
        for i in range(40):
            assert engine.recommend(home(f"u{i:05d}")).version == "v0001"  # shadow: the serving answer
        wait_for(lambda: engine.trials.summary()["canvases"].get("home", {}).get("shadow", {}).get("compared") == 40)
        shadow = engine.trials.summary()["canvases"]["home"]["shadow"]
        assert 0.0 <= shadow["overlap_at_k"] <= 1.0 and shadow["overlap_at_k"] > 0
        assert dep.router.trial is not None  # a healthy candidate stays on trial

        # the candidate's model path breaks: clients never see it, and the trial is aborted automatically
        candidate = dep.versions["v0002"]

        def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError("candidate exploded")

        candidate.rank = broken  # type: ignore[method-assign]
        for i in range(40):
            answer = engine.recommend(home(f"w{i:05d}"))
            assert answer.version == "v0001" and answer.source == "model"
        wait_for(lambda: dep.router.trial is None, timeout=20)
        assert "automatic" in (dep.trials.last_abort or "") and "failed" in (dep.trials.last_abort or "")
        assert dep.control.setting("trial") is None
        assert dep.control.get("v0002").state == "ready"  # type: ignore[union-attr]


def test_a_canary_whose_candidate_fails_is_aborted_and_its_requests_fall_back(two_live: Deployment) -> None:
    dep = two_live
    dep.trials.start("v0002", "canary", share=1.0)
    dep.versions["v0002"].rank = lambda *a, **k: 1 / 0  # type: ignore[method-assign]
    with engine_for(dep, trial_min_requests=10) as engine:
        answers = [engine.recommend(home(f"u{i}")) for i in range(30)]
        assert all(a.items for a in answers)  # every client got an answer (a fallback while it failed)
        wait_for(lambda: dep.router.trial is None, timeout=20)
        assert engine.recommend(home("after")).version == "v0001"


def test_trials_through_the_admin_api_and_the_command_line(two_live: Deployment, tmp_path: Path) -> None:
    dep = two_live
    settings = ServeSettings(root=dep.root, registry=dep.registry.root, admin_token=TOKEN)
    with live_server(create_app(settings, deployment=dep)) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"version": "v0002", "mode": "canary", "share": 0.5}
        assert client.post("/v1/admin/trial", json=body).status_code == 401
        assert client.post("/v1/admin/trial", json={**body, "share": 1.5}, headers=AUTH).status_code == 422
        started = client.post("/v1/admin/trial", json=body, headers=AUTH)
        assert started.status_code == 200, started.text
        assert started.json()["trial"]["version"] == "v0002"
        versions = {
            client.post("/v1/recommend", json={"canvas": "home", "context": {"user_id": f"u{i}"}}).json()["version"]
            for i in range(40)
        }
        assert versions == {"v0001", "v0002"}
        status = client.get("/v1/admin/trial", headers=AUTH).json()
        assert set(status["comparison"]["canvases"]["home"]["versions"]) == {"v0001", "v0002"}
        metrics = client.get("/metrics").text  # the same comparison for Prometheus
        assert 'monorec_trial_answers{canvas="home",version="v0002"}' in metrics
        assert 'monorec_trial_p99_seconds{canvas="home",version="v0001"}' in metrics
        wait_for(lambda: "home" in client.get("/v1/admin/trial", headers=AUTH).json()["event_rates"])
        assert client.post("/v1/admin/trial/abort", headers=AUTH).json()["aborted"] == "v0002"
        assert client.post("/v1/admin/trial/abort", headers=AUTH).status_code == 409  # nothing runs
    dep.close()

    # without a server the command line keeps the trial in the folder's control plane; the next owner
    # (a restart) resumes it
    where = ["--root", str(dep.root), "--registry", str(dep.registry.root)]
    assert main(["canary", "start", "v0002", "--shadow", *where]) == 0
    with Deployment(dep.root, dep.registry) as again:
        again.open()
        assert again.router.trial is not None and again.router.trial.mode == "shadow"
    assert main(["canary", "promote", *where]) == 0
    with Deployment(dep.root, dep.registry) as again:
        again.open()
        assert again.control.pointer("serving") == "v0002" and again.router.trial is None
