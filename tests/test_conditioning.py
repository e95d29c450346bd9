"""What the text encoder tells apart: the edits say what they should, and the distances are
measured on the encoder's real embeddings."""

import torch

from b2diffurl.world import shapes
from b2diffurl.lab.conditioning import EDITS, edit, format_separation, load_text_encoder, separation


def test_each_edit_changes_what_it_names():
    caption = shapes.parse_caption("a red circle above a blue square")
    assert edit(caption, "direction").text() == "a red circle below a blue square"
    assert edit(caption, "axis").text() == "a red circle to the left of a blue square"
    assert edit(caption, "colour").text() == "a green circle above a blue square"
    assert edit(caption, "shape").text() == "a red square above a blue square"
    assert edit(caption, "paraphrase").text() == "a blue square below a red circle"
    # the paraphrase shows the same scene: its two objects keep their places
    left = shapes.parse_caption("a red circle to the left of a blue circle")
    assert edit(left, "paraphrase").text() == "a blue circle to the right of a red circle"
    assert edit(left, "shape").text() == "a red square to the left of a blue circle"  # never the second object
    same = shapes.parse_caption("a red circle below a red square")
    assert edit(same, "colour").objects[0][0] not in ("red",)


def test_separation_on_a_text_encoder(tiny_model_dir):
    tokenizer, encoder = load_text_encoder(tiny_model_dir)
    result = separation(tokenizer, encoder)
    assert list(result) == list(EDITS)
    assert result["colour"]["of_colour"] == 1.0
    for row in result.values():
        assert row["n"] == 528 and 0 < row["p10"] <= row["median"] <= row["p90"]
    # the distance is that of the embeddings themselves: an encoder that ignores its input has none
    class Constant(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, ids):
            return (torch.ones(ids.shape[0], ids.shape[1], 4),)

    flat = separation(tokenizer, Constant())
    assert all(row["p90"] == 0.0 for row in flat.values())
    assert "direction" in format_separation(result)


def test_swapped_counts_the_pairs_whose_objects_changed_places():
    import numpy as np

    from b2diffurl.lab.conditioning import swapped

    rng = np.random.default_rng(0)
    prompts = ["a red circle above a blue square", "a green triangle to the left of a red square",
               "a yellow circle below a blue triangle"]
    flipped = [edit(shapes.parse_caption(p), "direction").text() for p in prompts]
    drawn = np.stack([shapes.render(p, rng) for p in prompts])
    # each edit drawn as its own words say: the objects changed places in every pair
    moved = swapped(drawn, np.stack([shapes.render(p, rng) for p in flipped]), prompts)
    assert moved == {"pairs": 3, "moved": 3, "share": 1.0, "order_right": 3, "order_of": 3}
    # the edits drawn as the original captions (the noise, not the words, decided): none moved
    kept = swapped(drawn, np.stack([shapes.render(p, rng) for p in prompts]), prompts)
    assert kept["pairs"] == 3 and kept["moved"] == 0
    # a pair with a wrong object does not count
    wrong = np.stack([shapes.render("a red circle", rng)] + [shapes.render(p, rng) for p in prompts[1:]])
    assert swapped(wrong, np.stack([shapes.render(p, rng) for p in flipped]), prompts)["pairs"] == 2


def test_relation_response_draws_a_caption_and_its_edit_from_one_noise(tiny_model_dir):
    from b2diffurl.lab.conditioning import relation_response

    captions = ["a red circle above a blue square", "a green triangle to the left of a red square"]
    result = relation_response(tiny_model_dir, captions, images_per_caption=2, num_steps=2)
    assert set(result) == {"pairs", "moved", "share", "order_right", "order_of"}
    assert 0 <= result["moved"] <= result["pairs"] <= 4 and 0 <= result["order_right"] <= result["order_of"] <= 4
