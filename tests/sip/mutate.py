"""Deterministic random edits of text, for the 'only BadMessage' tests."""

import random


def mutations(seed: int, seeds: list[str], alphabet: str, count: int):
    """`count` strings, each one of `seeds` with 1-4 characters deleted or inserted."""
    rng = random.Random(seed)
    for _ in range(count):
        s = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(s) + 1)
            if rng.random() < 0.5 and s:
                del s[min(i, len(s) - 1)]
            else:
                s.insert(i, rng.choice(alphabet))
        yield "".join(s)
