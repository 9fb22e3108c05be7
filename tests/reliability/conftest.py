"""Fixtures of the reliability suite: a seeded RNG (the seed is printed, so a failing run
can be replayed with CDP_TORTURE_SEED) and the iteration scale (CDP_TORTURE_ITERATIONS,
default 1: the bounded CI run of `make torture`; bigger values for heavier local runs)."""

from __future__ import annotations

import os
import random
import time

import pytest


def iterations(base: int) -> int:
    """`base` iterations times the CDP_TORTURE_ITERATIONS scale (at least 1)."""
    scale = int(os.environ.get("CDP_TORTURE_ITERATIONS", "1") or "1")
    return max(1, base * scale)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("CDP_TORTURE_SEED") or time.time_ns() % 2**32)
    # -s shows it; -ra shows it for failures through the report section as well.
    print(f"\n[{request.node.name}] CDP_TORTURE_SEED={seed}")
    request.node.user_properties.append(("seed", seed))
    return random.Random(seed)


def record(test: str, **figures: object) -> None:
    """Print a test's figures, and append them as a JSON line to $CDP_TORTURE_REPORT when
    set (docs/RELIABILITY.md is written from that file)."""
    import json

    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"FIGURES {line}")
    path = os.environ.get("CDP_TORTURE_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
