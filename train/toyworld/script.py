"""Action scripts of the toy world: keyframed, smooth trajectories of the product and the presenter's hands.

A script is a chain of actions; each starts where the previous one ended. On the table the presenter can
pick the product up, reach for it, or talk beside it; once held, they can turn it, show it, hold it or put
it down. Moves follow minimum-jerk profiles (zero velocity and acceleration at each keyframe), so the
trajectories are smooth. While the product is held the hands sit on its grip points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import BODY, grip_points

__all__ = ["Track", "ACTION_PHRASES", "script", "rest_hands", "CHEST"]

CHEST = (0.0, 0.12)  # where a held product rests in front of the torso
# Phrase when the action names the product first, and when the product was already named.
ACTION_PHRASES = {
    "pick_up": ("picks up {np}", "picks it up"),
    "touch": ("reaches for {np}", "reaches for it"),
    "gesture": ("gestures next to {np} on the table", "gestures"),
    "rotate": ("turns {np} in both hands", "turns it"),
    "show": ("holds up {np} and shows it", "shows it"),
    "put_down": ("puts {np} down on the table", "puts it down"),
    "hold": ("holds {np}", "holds it"),
}
_ON_TABLE = (("pick_up", 0.6), ("touch", 0.2), ("gesture", 0.2))
_HELD = (("rotate", 0.3), ("show", 0.3), ("put_down", 0.2), ("hold", 0.2))


@dataclass
class Track:
    """Per-frame arrays of a script: product centre [T, 2] and angle [T], hands [T, 2, 2], the product is
    attached to the hands [T], the hands are on the product's grip points [T]; action spans (name, start, end)."""

    centre: np.ndarray
    angle: np.ndarray
    hands: np.ndarray
    held: np.ndarray
    grip: np.ndarray
    actions: list[tuple[str, int, int]]


def rest_hands() -> np.ndarray:
    """Both hands resting on the table: [2, 2] (left at +x)."""
    return np.array([[BODY.rest_hand[0], BODY.rest_hand[1]], [-BODY.rest_hand[0], BODY.rest_hand[1]]])


def _min_jerk(n: int) -> np.ndarray:
    """Progress [n] from just after 0 to exactly 1 along 10τ³ - 15τ⁴ + 6τ⁵."""
    tau = np.arange(1, n + 1) / n
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


class _Builder:
    """Appends segments to a growing script, tracking the current state."""

    def __init__(self, kind: str, size: tuple[float, float], centre: np.ndarray, held: bool) -> None:
        self.kind, self.size = kind, size
        self.centre, self.angle, self.held = np.asarray(centre, float), 0.0, held
        self.hands = self._grips(self.centre[None], np.zeros(1))[0] if held else rest_hands()
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.actions: list[tuple[str, int, int]] = []
        self.length = 0

    def _grips(self, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
        return grip_points(self.kind, self.size, centre, angle)

    def _append(self, centre, angle, hands, held: bool, grip) -> None:
        n = len(angle)
        self.parts.append((centre, angle, hands, np.full(n, held), np.broadcast_to(grip, (n,)).copy()))
        self.centre, self.angle, self.hands, self.held = centre[-1], float(angle[-1]), hands[-1], held
        self.length += n

    def move_hands(self, target: np.ndarray, n: int, grip_at_end: bool = False) -> None:
        """Hands travel to target [2, 2]; the product stays where it is."""
        p = _min_jerk(n)[:, None, None]
        hands = self.hands + p * (target - self.hands)
        grip = np.zeros(n, bool)
        grip[-1] = grip_at_end
        self._append(np.repeat(self.centre[None], n, 0), np.full(n, self.angle), hands, False, grip)

    def wait(self, n: int, grip: bool) -> None:
        """Nothing moves for n frames."""
        hands = np.repeat(self.hands[None], n, 0)
        self._append(np.repeat(self.centre[None], n, 0), np.full(n, self.angle), hands, self.held, grip)

    def move_product(self, centre: tuple[float, float], angle: float, n: int, wobble: np.ndarray | None = None) -> None:
        """The held product travels to (centre, angle), plus an angle offset `wobble` [n]; the hands follow it."""
        p = _min_jerk(n)
        c = self.centre + p[:, None] * (np.asarray(centre) - self.centre)
        a = self.angle + p * (angle - self.angle) + (0.0 if wobble is None else wobble)
        self._append(c, a, self._grips(c, a), True, True)

    def build(self) -> Track:
        cols = [np.concatenate(x) for x in zip(*self.parts)]
        return Track(*cols, actions=self.actions)


def _table_centre(size: tuple[float, float], x: float) -> np.ndarray:
    return np.array([x, BODY.table_y - size[1] / 2 + 0.01])


def _act(b: _Builder, name: str, rng: np.random.Generator) -> None:
    """Append one action to the builder."""
    start = b.length
    if name in ("pick_up", "touch"):
        b.move_hands(b._grips(b.centre[None], np.zeros(1))[0], int(rng.integers(12, 19)), grip_at_end=True)
        b.wait(4 if name == "pick_up" else int(rng.integers(6, 11)), grip=True)
        if name == "pick_up":
            b.move_product((CHEST[0] + rng.uniform(-0.03, 0.03), CHEST[1]), 0.0, int(rng.integers(16, 25)))
        else:
            b.move_hands(rest_hands(), int(rng.integers(12, 17)))
    elif name == "gesture":
        n = int(rng.integers(20, 41))
        b.wait(n // 3, grip=False)
        lifted = rest_hands().copy()
        lifted[int(rng.integers(2)), 1] -= rng.uniform(0.05, 0.1)  # a small gesture of one hand
        b.move_hands(lifted, n // 3)
        b.move_hands(rest_hands(), n - 2 * (n // 3))
    elif name == "rotate":
        n = int(rng.integers(30, 51))
        tau = np.arange(1, n + 1) / n
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 0.9) * np.sin(2 * np.pi * tau) * np.sin(np.pi * tau)
        b.move_product(tuple(b.centre), 0.0, n, wobble=turn)
    elif name == "show":
        side = rng.choice([-1.0, 1.0])
        back = tuple(b.centre)
        b.move_product((side * 0.25, 0.0), side * 0.15, int(rng.integers(12, 19)))
        b.move_product(tuple(b.centre), side * 0.15, int(rng.integers(10, 21)))
        b.move_product(back, 0.0, int(rng.integers(12, 19)))
    elif name == "put_down":
        b.move_product(tuple(_table_centre(b.size, rng.uniform(-0.06, 0.06))), 0.0, int(rng.integers(16, 23)))
        b.move_hands(rest_hands(), int(rng.integers(12, 17)))
    elif name == "hold":
        n = int(rng.integers(20, 37))
        sway = 0.08 * np.sin(np.pi * np.arange(1, n + 1) / n) * rng.choice([-1.0, 1.0])
        b.move_product(tuple(b.centre), 0.0, n, wobble=sway)
    else:
        raise ValueError(f"unknown action {name!r}; known: {sorted(ACTION_PHRASES)}")
    b.actions.append((name, start, b.length))


def script(rng: np.random.Generator, kind: str, size: tuple[float, float], num_frames: int) -> Track:
    """A random chain of actions at least `num_frames` long, cut to exactly `num_frames`."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    held = bool(rng.random() < 0.4)
    b = _Builder(kind, size, np.array(CHEST) if held else _table_centre(size, rng.uniform(-0.06, 0.06)), held)
    while b.length < num_frames:
        names, weights = zip(*(_HELD if b.held else _ON_TABLE))
        _act(b, str(rng.choice(names, p=np.array(weights) / sum(weights))), rng)
    track = b.build()
    cut = {f: getattr(track, f)[:num_frames] for f in ("centre", "angle", "hands", "held", "grip")}
    actions = [(n, s, min(e, num_frames)) for n, s, e in track.actions if s < num_frames]
    return Track(**cut, actions=actions)
