"""Generate the project's own prompt files (the paper's, config/prompt/template*.json, are
copied from the authors' release and not generated).

Run from the repository root:

    python tools/make_prompts.py

Standard library only and deterministic (no randomness, fixed list orders). Writes JSON lists
of strings (indent=2, trailing newline):

* config/prompt/extra/colour_fruit_{train,test}.json -- "a(n) [colour] [fruit/vegetable]",
  for the offline colour_match reward of config/tiny_random.py.
* config/prompt/shapes/{train,test}.json -- the shapes world (b2diffurl.world.shapes): "a red circle",
  "a blue square to the left of a green triangle"; test holds the held-out bindings and pairs.
* config/prompt/shapes/check.json -- four training captions of one pair of objects, one in each
  relation, for the basic learning check (config/shapes_check.py).
"""

import json
import os
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT_DIR = os.path.join(REPO, "config", "prompt")

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]

FRUITS = [
    "apple", "banana", "carrot", "tomato", "lemon", "grape", "pear", "pepper",
    "cabbage", "eggplant", "strawberry", "cucumber", "pumpkin", "onion",
    "plum", "broccoli",
]


def article(word):
    """Indefinite article for `word`: a first-letter vowel rule is enough for the words above."""
    return "an" if word[0].lower() in "aeiou" else "a"


def colour_fruit():
    """All colour x fruit combinations in (colour, fruit) nested order. Combination (c, f) goes
    to test when (c + f) % 4 == 3, i.e. every 4th combination along a diagonal, otherwise to
    train. A plain `flat_index % 4 == 3` rule would be degenerate: 16 fruits is a multiple of 4,
    so the same 4 fruits would be held out for every colour. The diagonal rule holds out a
    quarter while every colour keeps 12 train / 4 test fruits and every fruit 6 / 2 colours."""
    train, test = [], []
    for c, colour in enumerate(COLOURS):
        for f, fruit in enumerate(FRUITS):
            prompt = f"{article(colour)} {colour} {fruit}"
            (test if (c + f) % 4 == 3 else train).append(prompt)
    return train, test


def shapes_world():
    """Every shapes-world caption, to train or test by b2diffurl.world.shapes.split_of."""
    sys.path.insert(0, REPO)
    from b2diffurl.world.shapes import all_captions, split_of

    train, test = [], []
    for caption in all_captions():
        (train if split_of(caption) == "train" else test).append(caption.text())
    return train, test


def shapes_check(train):
    """One training pair of objects in its four relations: the captions of the basic check that the
    update learns what it is rewarded for (config/shapes_check.py); only the relation words tell
    them apart."""
    check = [text for text in train if text.startswith("a red circle ") and text.endswith(" a green triangle")]
    assert len(check) == 4, check
    return check


def write_json(name, prompts):
    path = os.path.join(OUT_DIR, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(prompts, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(prompts):4d} prompts -> {os.path.relpath(path)}")


def main():
    for folder, (train, test) in (("extra/colour_fruit_", colour_fruit()), ("shapes/", shapes_world())):
        assert not set(train) & set(test), f"{folder}: train/test overlap"
        write_json(f"{folder}train.json", train)
        write_json(f"{folder}test.json", test)
    write_json("shapes/check.json", shapes_check(shapes_world()[0]))


if __name__ == "__main__":
    main()
