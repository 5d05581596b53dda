"""gymnasium's classic-control environments, for the reinforcement-learning pipelines.

    env = make_env("CartPole-v1", seed=0)
    observation, info = env.reset(seed=0)

Source: the environments are simulated by gymnasium itself (pure Python physics, no data files,
no rendering needed): CartPole-v1 (4-d observation, 2 actions, episodes up to 500 steps),
Acrobot-v1 (6-d, 3 actions, up to 500), MountainCar-v0 (2-d, 3 actions, up to 200) and
Pendulum-v1 (3-d, one continuous action in [−2, 2], 200). Install with
`pip install 'replearn[rl]'` (or gymnasium).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CLASSIC_CONTROL", "env_dims", "make_env", "make_vector_env"]

CLASSIC_CONTROL = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1")


def _gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise ImportError("the classic-control environments need gymnasium: pip install 'replearn[rl]' (or gymnasium)") from None
    return gymnasium


def _check(name: str) -> None:
    if name not in CLASSIC_CONTROL:
        raise ValueError(f"make_env: unknown environment {name!r}; choose one of {', '.join(CLASSIC_CONTROL)}")


def make_env(name: str, seed: int | None = None, **kwargs: Any) -> Any:
    """A gymnasium environment; with `seed`, its first reset and its action space are seeded."""
    _check(name)
    env = _gymnasium().make(name, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(name: str, num_envs: int, seed: int = 0) -> Any:
    """`num_envs` copies stepped together in this process (gymnasium's SyncVectorEnv), seeded seed, seed+1, ..."""
    _check(name)
    gymnasium = _gymnasium()
    envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(name) for _ in range(num_envs)])
    envs.reset(seed=[seed + i for i in range(num_envs)])
    return envs


def env_dims(name: str) -> tuple[int, int, bool]:
    """(observation size, number of actions or action size, whether actions are discrete)."""
    env = make_env(name)
    try:
        discrete = hasattr(env.action_space, "n")
        actions = int(env.action_space.n) if discrete else int(env.action_space.shape[0])
        return int(env.observation_space.shape[0]), actions, discrete
    finally:
        env.close()
