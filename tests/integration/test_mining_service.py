"""The mining service as a real Ray actor: answers, bounded fallback when it dies, restore on restart."""

from __future__ import annotations

import os
import time

import numpy as np

from dml_dist.config import MiningConfig
from dml_dist.mining.actor import start_mining_actor
from dml_dist.mining.client import MiningClient


def _wait_for_restart(ray, actor, timeout_s: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stats: dict = ray.get(actor.stats.remote(), timeout=10)
            return stats
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_until_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"the killed actor's process {pid} is still alive")


def test_actor_answers_falls_back_when_killed_and_restores_its_bank(ray_session, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ray = ray_session
    num_classes, dim, n = 200, 16, 20
    # top_k=1: every seed is joined by its nearest class (its twin below), so a batch is whole pairs.
    config = MiningConfig(
        warmup_coverage=0.5, warmup_steps=0, ramp_steps=0, random_share=0.0, top_k=1, timeout_s=0.05, save_every_steps=0
    )
    bank_path = tmp_path / "mining_bank.npz"
    actor = start_mining_actor("test-restart", num_classes, dim, config, seed=0, checkpoint_path=str(bank_path))
    client = MiningClient(actor, timeout_s=5.0, seed=0, num_classes=num_classes, n=n)
    try:
        # Cold bank: the service answers with random classes, which counts as a fallback.
        client.request(1)
        answer = client.classes_for(1)
        assert answer.mined is False and answer.fallback_reason == "warmup" and client.fallbacks == 1
        # Near-duplicate pairs (2i, 2i + 1): a mined batch is made of whole pairs.
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((num_classes // 2, dim))
        emb = np.repeat(centres, 2, axis=0) + 0.05 * rng.standard_normal((num_classes, dim))
        client.publish(1, np.arange(num_classes), emb.astype(np.float32))
        # Step t's answer reads the publishes of steps <= t - 3; the client asks two steps ahead,
        # and peek(t + 1) (the loader's prefetch) gets the very answer classes_for(t + 1) returns.
        client.request(4)
        answer = client.classes_for(4)
        assert answer.mined is True and client.fallbacks == 1
        assert np.all(np.bincount(np.asarray(answer.classes) // 2) % 2 == 0)
        upcoming = client.peek(5)
        assert client.classes_for(5).classes == upcoming and client.fallbacks == 1

        client.save_bank(str(bank_path))
        stats = ray.get(actor.stats.remote(), timeout=10)
        assert stats["latest_step"] == 1 and bank_path.is_file()  # calls run in order: saved

        # Kill the actor (Ray restarts it): the step falls back to random classes within the bound.
        client.timeout_s = config.timeout_s
        ray.kill(actor, no_restart=False)
        _wait_until_gone(stats["pid"])
        client.request(6)
        started = time.perf_counter()
        answer = client.classes_for(6)
        waited = time.perf_counter() - started
        assert answer.fallback is True and answer.mined is False
        assert answer.fallback_reason in ("timeout", "unavailable") and client.fallbacks == 2
        assert waited < config.timeout_s + 1.0
        assert len(set(answer.classes)) == n

        # The restarted actor restored its bank from the saved file and mines again.
        restarted = _wait_for_restart(ray, actor)
        assert restarted["pid"] != stats["pid"]
        assert restarted["restored_step"] == 1 and restarted["coverage"] == 1.0
        client.timeout_s = 10.0
        client.request(8)
        answer = client.classes_for(8)
        assert answer.mined is True and client.fallbacks == 2
    finally:
        ray.kill(actor, no_restart=True)


def test_state_saved_through_the_client_restores_into_a_new_actor(ray_session, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """save_state / restore_state through Ray: a new actor answers as the saved one would."""
    num_classes, dim, n = 300, 16, 24
    config = MiningConfig(warmup_steps=5, ramp_steps=5, timeout_s=30.0, save_every_steps=0)
    emb = np.random.default_rng(1).standard_normal((num_classes, dim)).astype(np.float32)
    first = start_mining_actor("test-state-a", num_classes, dim, config, seed=2)
    second = start_mining_actor("test-state-b", num_classes, dim, config, seed=2)
    try:
        client = MiningClient(first, timeout_s=30.0, seed=2, num_classes=num_classes, n=n)
        for step in range(12):  # the loop's order: ask ahead, take the step's classes, publish
            client.request(step)
            classes = np.asarray(client.classes_for(step).classes)
            client.publish(step, classes, emb[classes])
        path = client.save_state(str(tmp_path / "mining_state.npz"))
        resumed = MiningClient(second, timeout_s=30.0, seed=2, num_classes=num_classes, n=n)
        assert resumed.restore_state(path) == 11
        for step in range(12, 20):
            client.request(step)
            resumed.request(step)
            expected, got = client.classes_for(step), resumed.classes_for(step)
            assert expected.mined is True and got.classes == expected.classes
            client.publish(step, np.asarray(expected.classes), emb[expected.classes])
            resumed.publish(step, np.asarray(got.classes), emb[got.classes])
    finally:
        ray_session.kill(first, no_restart=True)
        ray_session.kill(second, no_restart=True)
