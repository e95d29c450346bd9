"""Generate the prompt files in config/prompt/.

Run from the repository root:

    python tools/make_prompts.py

This regenerates every prompt file (JSON lists of strings, indent=2,
trailing newline) in config/prompt/. The script uses only the standard
library and is fully deterministic: no randomness, fixed list orders.

Prompt sets written (see config/prompt/README.md for details):

* animal_activity_{train,test}.json -- "a(n) [animal] [activity]", the
  template used in "Towards Better Alignment: Training Diffusion Models
  with RL Against Sparse Rewards" (B2-DiffuRL).
* colour_fruit_{train,test}.json    -- "a(n) [colour] [fruit/vegetable]".
* spatial_{train,test}.json         -- "[object] [relation] [object]".
* shapes/{train,test}.json          -- the shapes world (b2diffurl.shapes): "a red circle",
  "a blue square to the left of a green triangle"; test holds the held-out bindings and pairs.
  A subfolder, so that the tiny model's tokenizer (built from the words of config/prompt/*.json)
  is unchanged.
"""

import json
import os

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "prompt")

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

ANIMALS = [
    "cat", "dog", "horse", "cow", "pig", "sheep", "goat", "rabbit", "mouse",
    "hamster", "fox", "wolf", "bear", "lion", "tiger", "elephant", "giraffe",
    "zebra", "monkey", "gorilla", "panda", "koala", "kangaroo", "camel",
    "deer", "squirrel", "raccoon", "otter", "beaver", "hedgehog", "owl",
    "eagle", "penguin", "parrot", "duck", "chicken", "frog", "turtle",
    "crocodile", "snake", "dolphin", "octopus", "ant", "bee", "butterfly",
]

ACTIVITIES = ["riding a bike", "playing chess", "washing dishes"]

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]

FRUITS = [
    "apple", "banana", "carrot", "tomato", "lemon", "grape", "pear", "pepper",
    "cabbage", "eggplant", "strawberry", "cucumber", "pumpkin", "onion",
    "plum", "broccoli",
]

OBJECTS = [
    "cup", "book", "ball", "chair", "lamp", "clock", "vase", "phone", "shoe",
    "hat", "box", "bottle",
]

RELATIONS = ["on the left of", "on the right of", "on top of", "under", "next to"]

# Objects whose pairs (as the FIRST object) are held out for the spatial test set.
SPATIAL_TEST_FIRST_OBJECTS = {"clock", "vase"}
SPATIAL_TRAIN_CAP = 200
SPATIAL_TEST_CAP = 100


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def article(word):
    """Indefinite article for `word`. A first-letter vowel rule is enough for
    the vocabulary above (no 'hour'/'unicorn'-style exceptions in it)."""
    return "an" if word[0].lower() in "aeiou" else "a"


def with_article(word):
    return f"{article(word)} {word}"


def evenly_spaced(items, cap):
    """Return `items` unchanged if len <= cap, else exactly `cap` items taken
    at evenly spaced indices i * len // cap (deterministic 'every n-th')."""
    n = len(items)
    if n <= cap:
        return list(items)
    return [items[i * n // cap] for i in range(cap)]


def write_json(name, prompts):
    path = os.path.join(OUT_DIR, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(prompts, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(prompts):4d} prompts -> {os.path.relpath(path)}")


# --------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------

def animal_activity():
    """Animal i gets activity i % 3 in train; the other two go to test."""
    train, test = [], []
    for i, animal in enumerate(ANIMALS):
        for j, activity in enumerate(ACTIVITIES):
            prompt = f"{with_article(animal)} {activity}"
            (train if j == i % len(ACTIVITIES) else test).append(prompt)
    return train, test


def colour_fruit():
    """All colour x fruit combinations in (colour, fruit) nested order.
    Combination (c, f) goes to test when (c + f) % 4 == 3, i.e. every 4th
    combination along a diagonal, otherwise to train.

    A plain `flat_index % 4 == 3` rule would be degenerate here: 16 fruits is
    a multiple of 4, so the same 4 fruits would land in test for every colour
    and never be seen in train. The diagonal rule still holds out exactly a
    quarter, but every colour keeps 12 train / 4 test fruits and every fruit
    keeps 6 train / 2 test colours."""
    train, test = [], []
    for c, colour in enumerate(COLOURS):
        for f, fruit in enumerate(FRUITS):
            prompt = f"{article(colour)} {colour} {fruit}"
            (test if (c + f) % 4 == 3 else train).append(prompt)
    return train, test


def spatial():
    """All ordered pairs of distinct objects x relations, in (first, second,
    relation) nested order. Pairs whose first object is in
    SPATIAL_TEST_FIRST_OBJECTS go to test, the rest to train; each list is
    then capped with evenly_spaced()."""
    train, test = [], []
    for first in OBJECTS:
        for second in OBJECTS:
            if first == second:
                continue
            for relation in RELATIONS:
                prompt = f"{with_article(first)} {relation} {with_article(second)}"
                (test if first in SPATIAL_TEST_FIRST_OBJECTS else train).append(prompt)
    return evenly_spaced(train, SPATIAL_TRAIN_CAP), evenly_spaced(test, SPATIAL_TEST_CAP)


def shapes_world():
    """Every shapes-world caption, to train or test by b2diffurl.shapes.split_of."""
    import sys

    sys.path.insert(0, os.path.join(OUT_DIR, "..", ".."))
    from b2diffurl.shapes import all_captions, split_of

    train, test = [], []
    for caption in all_captions():
        (train if split_of(caption) == "train" else test).append(caption.text())
    return train, test


def main():
    assert len(ANIMALS) == 45 and len(set(ANIMALS)) == 45
    assert len(ACTIVITIES) == 3
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, (train, test) in [
        ("animal_activity", animal_activity()),
        ("colour_fruit", colour_fruit()),
        ("spatial", spatial()),
    ]:
        assert not set(train) & set(test), f"{name}: train/test overlap"
        write_json(f"{name}_train.json", train)
        write_json(f"{name}_test.json", test)
    train, test = shapes_world()
    assert not set(train) & set(test)
    os.makedirs(os.path.join(OUT_DIR, "shapes"), exist_ok=True)
    write_json(os.path.join("shapes", "train.json"), train)
    write_json(os.path.join("shapes", "test.json"), test)


if __name__ == "__main__":
    main()
