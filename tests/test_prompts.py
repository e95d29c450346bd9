"""Prompt files and text embeddings."""

import glob
import os

import numpy as np
import pytest
import torch
from conftest import REPO

from b2diffurl.errors import UserError
from b2diffurl.models.prompts import choose_prompts, encode_prompts, load_prompts


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "config", "prompt", "**", "*.json"),
                                                  recursive=True)))
def test_shipped_prompt_files_load(path):
    assert len(load_prompts(path)) > 0


def test_train_and_test_prompts_do_not_overlap():
    trains = glob.glob(os.path.join(REPO, "config", "prompt", "**", "*train.json"), recursive=True)
    assert len(trains) == 5  # the paper's templates 1-3, colour-fruit, shapes
    for train in trains:
        test = train.replace("train.json", "test.json")
        assert not set(load_prompts(train)) & set(load_prompts(test)), train


@pytest.mark.parametrize("content, message", [
    ("[]", "non-empty JSON list"), ('{"a": 1}', "non-empty JSON list"), ('["ok", ""]', "not non-empty strings"),
    ('["ok", 3]', "not non-empty strings"), ("[not json", "not valid JSON"),
])
def test_bad_prompt_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(str(path))
    with pytest.raises(UserError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.json"))


def test_choose_prompts_is_seeded():
    prompts = [f"p{i}" for i in range(10)]
    first = choose_prompts(prompts, 6, np.random.default_rng(3))
    assert first == choose_prompts(prompts, 6, np.random.default_rng(3)) and set(first) <= set(prompts)


def test_encode_prompts_pads_to_the_tokenizer_length_and_warns_on_truncation(tiny_model_dir, caplog):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(f"{tiny_model_dir}/tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(f"{tiny_model_dir}/text_encoder")
    embeds = encode_prompts(tokenizer, text_encoder, ["a red apple", "a blue plum"])
    assert embeds.shape == (2, 77, 32)
    assert not torch.allclose(embeds[0], embeds[1])
    with caplog.at_level("WARNING"):
        encode_prompts(tokenizer, text_encoder, [" ".join(["apple"] * 100)])
    assert "truncated" in caplog.text


def test_an_embedding_does_not_depend_on_the_other_prompts_of_the_call(tiny_model_dir):
    """Sampling and training rebuild embeddings from the text in different batches: bit for bit."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(f"{tiny_model_dir}/tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(f"{tiny_model_dir}/text_encoder")
    together = encode_prompts(tokenizer, text_encoder, ["a red apple", "a blue plum", "a red apple", "a green pear"])
    alone = encode_prompts(tokenizer, text_encoder, ["a blue plum"])
    assert torch.equal(together[1], alone[0]) and torch.equal(together[0], together[2])


@pytest.mark.parametrize("folder, max_length", [("", 77), ("shapes", 16)])
def test_every_word_of_the_prompt_files_is_one_token_of_the_project_tokenizer(folder, max_length):
    from b2diffurl.world.random_model import PROMPT_DIR, make_tokenizer

    prompt_dir = os.path.join(PROMPT_DIR, folder)
    tokenizer = make_tokenizer(prompt_dir, max_length)
    paths = glob.glob(os.path.join(prompt_dir, "**", "*.json"), recursive=True)
    prompts = [p for path in paths for p in load_prompts(path)]
    words = sorted({w for p in prompts for w in p.lower().split()})
    assert {"triangle", "right", "cucumber"} & set(words)  # words whose merges collide with others'
    split = [w for w in words if len(tokenizer(w).input_ids) != 3]  # start, the word, end
    assert not split
    assert max(len(tokenizer(p).input_ids) for p in prompts) <= max_length
